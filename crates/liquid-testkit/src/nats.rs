//! nats fixture (being written).
