//! End-to-end tests: the real suite started in-process on 127.0.0.1:0, a
//! real PostgreSQL (one private cluster per test run, one database per test)
//! and real mutual-TLS gRPC clients for any identity.

mod attendance;
mod attendance_episodes;
mod attendance_outages;
mod authz_matrix;
mod batching;
mod database_tls;
mod delivery;
mod failover;
mod faults;
mod fhir;
mod fhir_conformance;
mod fhir_conformance_errors;
mod foundation;
mod group_commit;
mod handshakes;
mod hostile;
mod idle_streams;
mod migrations;
mod monitoring;
mod need_to_know;
mod nhs_number_changes;
mod notification;
mod notification_instances;
mod notification_publishing;
mod platform;
mod registry;
mod registry_lookups;
mod registry_sync;
mod relay;
mod reports;
mod restore;
mod retention;
mod retries;
mod revocation;
mod scope;
mod seeding;
mod settings;
mod silent_audit;
mod snapshot_conflicts;
mod surfaces;
mod uploads;
mod uploads_under_load;
mod users;
mod was_not_brought;
