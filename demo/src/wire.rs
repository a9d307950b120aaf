//! The JSON bodies of the Rinha APIs (field names as the Rinha spells them).

use serde::{Deserialize, Serialize};

/// `POST /payments` on the payments service.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequest {
    /// Unique payment id.
    pub correlation_id: uuid::Uuid,
    /// Decimal amount.
    pub amount: f64,
}

/// `POST /payments` on a processor.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessorPayment {
    /// Unique payment id.
    pub correlation_id: uuid::Uuid,
    /// Decimal amount.
    pub amount: f64,
    /// When the service asked for it: what the processors' and the service's summaries filter on.
    pub requested_at: String,
}

/// One processor's totals in `GET /payments-summary`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Number of payments.
    pub total_requests: u64,
    /// Sum of their amounts.
    pub total_amount: f64,
}

/// `GET /payments-summary` on the payments service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Payments the default processor accepted.
    pub default: Totals,
    /// Payments the fallback processor accepted.
    pub fallback: Totals,
}

/// `GET /admin/payments-summary` on a processor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminSummary {
    /// Number of payments.
    pub total_requests: u64,
    /// Sum of their amounts.
    pub total_amount: f64,
    /// Sum of their fees.
    pub total_fee: f64,
    /// The fee rate.
    pub fee_per_transaction: f64,
}

/// `GET /payments/service-health` on a processor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Whether `POST /payments` answers 500.
    pub failing: bool,
    /// The fastest `POST /payments` can answer, in milliseconds.
    pub min_response_time: u64,
}
