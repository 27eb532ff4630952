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

#[doc(hidden)]
pub use tikv_jemallocator;

/// Sets the allocator `sdp` runs with: jemalloc, with one arena, no thread caches, and freed pages handed back to
/// the system at once. `sdp serve` holds its agents' reports (10,000 containers of 1,000 sandboxes) and replaces one
/// whole whenever it changes; what counts is how little the allocator keeps around them. Measured on one machine,
/// each allocator in turn:
/// - `cargo bench -p sdp-e2e --bench memory -- agents`, median RSS with both reports held: mimalloc (what `sdp`
///   had, freed pages purged at once) 47.5 MB, glibc's malloc with one arena 55.0 MB, jemalloc with thread caches
///   41.9 MB, as set here 40.6 MB.
/// - `cargo bench -p sdp-reconciler --bench plan` (many small strings): compile + plan of 1,000 converged
///   sandboxes 3.2 ms with mimalloc, 4.0 ms with thread caches, 4.6 ms as set here; after a commit that edits one
///   sandbox 5.4, 12.0 and 8.0 ms. The price of the memory target, paid where it is least felt: a pass of one
///   sandbox after a report stays at 3 us.
///
/// The options are in jemalloc's `malloc_conf` symbol, read before `main`; the environment's `_RJEM_MALLOC_CONF`
/// still overrides them. Used by the binary and by the benchmarks that measure it, so that both run the same.
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static GLOBAL: $crate::tikv_jemallocator::Jemalloc = $crate::tikv_jemallocator::Jemalloc;

        /// jemalloc's options (`malloc_conf`, a C string it reads under the prefix tikv-jemalloc-sys gives).
        #[unsafe(export_name = "_rjem_malloc_conf")]
        static MALLOC_CONF: &[u8; 57] = b"narenas:1,tcache:false,dirty_decay_ms:0,muzzy_decay_ms:0\0";
    };
}
