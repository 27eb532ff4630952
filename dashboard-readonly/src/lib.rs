//! The read-only dashboard (issue 6): server-rendered pages and SSE live logs over a read-only view of the
//! reconciler's state. Nothing is here yet.
