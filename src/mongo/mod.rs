//! The MongoDB layer both the MongoDB store and `simplechat replset` stand
//! on: connection strings, clients, the driver's view of the topology, what
//! an error means, and the replica set's status.
//!
//! Nothing here knows about chat messages; `store::mongo` and `replset` both
//! depend on this module and never on each other.

pub mod client;
pub mod errors;
pub mod removed;
pub mod resolve;
pub mod status;
pub mod topology;
pub mod uri;

pub use client::{bound_waits, connect, options, Connection, Login, Purpose, Unusable};
pub use errors::{classify, reason, Class};
pub use resolve::{lookup, none_resolves, Lookup};
pub use status::{status_of, status_while_serving, MemberStatus, ReplicaSetStatus};
pub use topology::{ServerSnapshot, TopologySnapshot, TopologyView};
