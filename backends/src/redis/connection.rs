//! Connections: one multiplexed command connection (single server or cluster), how Redis
//! errors map to [`BackendErrorKind`], and URLs with their passwords redacted.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, RedisError};

/// Where the commands and the subscription go.
pub(super) enum Target {
    Single {
        client: Client,
        /// The same server, speaking RESP3, for subscriptions.
        subscriber: Box<Client>,
    },
    /// The command client; subscriptions build their own (the push sender is fixed per client).
    Cluster {
        client: Box<ClusterClient>,
        params: ClusterParams,
    },
}

#[derive(Clone)]
pub(super) struct ClusterParams {
    pub(super) nodes: Vec<String>,
    pub(super) root_cert: Option<Vec<u8>>,
    pub(super) connect_timeout: Duration,
    pub(super) response_timeout: Duration,
}

impl ClusterParams {
    pub(super) fn builder(&self) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(self.nodes.clone())
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .retries(2);
        if let Some(root_cert) = &self.root_cert {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert.clone()),
            });
        }
        builder
    }
}

/// The command connection: a multiplexed connection to one server, or a cluster connection
/// that routes each command (and each pipeline, by its first key) to the slot's master.
#[derive(Clone)]
pub(super) enum Commands {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Commands {
    /// SUBSCRIBE through the connection's own method, which remembers the channels (a
    /// cluster connection renews them after reconnects).
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Commands::Single(c) => c.subscribe(channels).await,
            Commands::Cluster(c) => c.subscribe(channels).await,
        }
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether a Redis error is transient ([`BackendErrorKind::Unavailable`]): the connection
/// (lost, refused, timed out) or a server or cluster state that passes by itself — a
/// failover or resharding (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`,
/// `READONLY` from a demoted primary), a server still loading its data (`LOADING`), busy
/// with a script (`BUSY`) or out of memory (`OOM`). Everything else (authentication, a
/// malformed request, a missing permission) is a refusal.
pub(super) fn is_transient(e: &RedisError) -> bool {
    if matches!(
        e.kind(),
        redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig
    ) {
        return false;
    }
    const TRANSIENT_CODES: [&str; 9] = [
        "MOVED",
        "ASK",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MASTERDOWN",
        "READONLY",
        "LOADING",
        "BUSY",
        "OOM",
    ];
    is_broken_connection(e)
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.code().is_some_and(|code| TRANSIENT_CODES.contains(&code))
}

/// Whether the connection under a call is gone (a new one would do).
pub(super) fn is_broken_connection(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// The URL without its password, for messages.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!(
                "{}://{}{}",
                &url[..scheme_end],
                if user.is_empty() {
                    String::new()
                } else {
                    format!("{user}:***")
                },
                &url[at..]
            )
        }
        _ => url.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://:secret@host"), "redis://@host");
        assert_eq!(redact("redis://host:1"), "redis://host:1");
    }
}
