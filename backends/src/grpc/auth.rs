//! Bearer-token authentication: the hub's check and the client's header.

#[cfg(feature = "grpc-server")]
use std::sync::Arc;

/// Checks `authorization: Bearer <token>` when a token is configured (the hub's side).
#[cfg(feature = "grpc-server")]
#[derive(Clone)]
pub(crate) struct TokenCheck {
    expected: Option<Arc<str>>,
}

#[cfg(feature = "grpc-server")]
impl TokenCheck {
    pub(crate) fn new(token: Option<String>) -> Self {
        TokenCheck {
            expected: token.map(|t| Arc::from(format!("Bearer {t}"))),
        }
    }
}

#[cfg(feature = "grpc-server")]
impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        // Constant-time: the time a wrong token takes to refuse says nothing about how many
        // of its leading bytes were right (only its length may show).
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        match given {
            Some(given)
                if bool::from(subtle::ConstantTimeEq::ct_eq(given, expected.as_bytes())) =>
            {
                Ok(request)
            }
            _ => Err(tonic::Status::unauthenticated(
                "missing or wrong bearer token",
            )),
        }
    }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub(super) struct AddToken(
    pub(super) Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
);

impl tonic::service::Interceptor for AddToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
