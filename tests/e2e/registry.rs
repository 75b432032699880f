//! End-to-end tests of the Registry service.
