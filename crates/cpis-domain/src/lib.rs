//! The domain's plain types and rules, free of any transport or database:
//! who is calling (identity from a certificate's SAN), what a valid NHS number,
//! council code, setting code and date are (validation that names the field that
//! failed), and what "a day" means (Europe/London).

pub mod demographics;
pub mod identity;
pub mod report;
pub mod time;
pub mod user;
pub mod validate;

pub use identity::{Caller, CallerKind, ServiceName};
pub use user::{Access, Role, User, Viewer};
pub use validate::{FieldViolation, Invalid, NhsNumber};
