//! SDP's reconciler: the config-repo source, the pure compile and plan steps, the controller loop, the agent hub,
//! the redb store and the HTTP API; and `sdp`, the CLI around them.

pub mod api;
pub mod auth;
pub mod change;
pub mod cli;
pub mod controller;
pub mod demo;
pub mod desired;
pub mod edit;
pub mod git;
pub mod http;
pub mod hub;
pub mod pins;
pub mod plan;
pub mod preview;
pub mod serve;
pub mod sets;
pub mod source;
pub mod store;
