//! docker fixture (being written).
