//! End-to-end tests of the Notification service.
