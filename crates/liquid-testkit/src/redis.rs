//! redis fixture (being written).
