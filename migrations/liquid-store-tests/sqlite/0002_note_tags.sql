-- Schema used only by liquid-store's own test suite: a foreign key, to prove it is enforced.
CREATE TABLE note_tags (
    note_id TEXT NOT NULL REFERENCES notes (id),
    tag     TEXT NOT NULL,
    PRIMARY KEY (note_id, tag)
);
