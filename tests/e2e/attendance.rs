//! End-to-end tests of the Attendance service.
