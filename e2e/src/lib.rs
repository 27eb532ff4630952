//! End-to-end scenarios against the real Docker engine, git and Go (issue 5). Nothing is here yet.
