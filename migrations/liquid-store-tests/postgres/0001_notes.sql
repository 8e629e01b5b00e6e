-- Schema used only by liquid-store's own test suite.
CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT NOT NULL);
