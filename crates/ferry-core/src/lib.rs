//! The broker model behind every front end: the catalog of topics (names, ids,
//! partitions, configs), each partition's log, and the background work that
//! keeps logs within their retention and fsync policies.
//!
//! This crate knows nothing of wire formats: it must never depend on a front
//! end (`ferry-kafka`, ...). Front ends translate protocol requests into calls
//! here and map [`CoreError`] to their protocol's error codes.

pub mod access;
pub mod alarm;
mod broker;
mod browse;
mod catalog;
pub mod connection_limit;
pub mod connections;
mod error;
pub mod group;
pub mod messaging;
pub mod metrics;
pub mod names;
mod producer_ids;
pub mod topic_config;

pub use broker::{Broker, BrokerConfig, Topic};
pub use error::CoreError;
pub use topic_config::{ConfigEntry, ConfigOp, ConfigSource};
