//! postgres fixture (being written).
