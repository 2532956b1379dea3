-- devicehub site schema, version 1. A shipped migration is never edited: add the next file.
--
-- Every QoS 1 message the collector took is in `messages` (idempotent on msg_id; at most
-- one row per (site, room, boot, seq)). What it says goes into the tables below, each
-- idempotent on its own key, so a redelivery or an outbox replay changes nothing.

CREATE TABLE rooms (
    site            text NOT NULL,
    room            text NOT NULL,
    status          text,                 -- online | offline (the retained status, the will)
    status_boot     integer,
    status_ts       timestamptz,
    last_seen       timestamptz,          -- the newest envelope ts of any message of the room
    session         text,                 -- from the retained session state
    session_state   text,
    session_ts      timestamptz,
    alarms          jsonb NOT NULL DEFAULT '[]',
    alarms_ts       timestamptz,
    PRIMARY KEY (site, room)
);

-- every boot of every hub, and which seq numbers of it are here
CREATE TABLE boots (
    site        text NOT NULL,
    room        text NOT NULL,
    boot        integer NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    seqs        bigint NOT NULL DEFAULT 0,     -- count of distinct seq numbers stored (kept by the writer)
    max_seq     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site, room, boot)
);
CREATE INDEX boots_with_gaps ON boots (last_seen) WHERE seqs < max_seq;

CREATE TABLE messages (
    msg_id      text PRIMARY KEY,
    site        text NOT NULL,
    room        text NOT NULL,
    boot        integer NOT NULL,
    seq         bigint,
    type        text NOT NULL,
    topic       text,
    ts          timestamptz NOT NULL,
    historical  boolean NOT NULL DEFAULT false,
    session     text,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX messages_seq ON messages (site, room, boot, seq) WHERE seq IS NOT NULL;

CREATE TABLE device_states (
    site       text NOT NULL,
    room       text NOT NULL,
    device     text NOT NULL,
    connected  boolean,
    state      text,
    fault      jsonb,
    data       jsonb NOT NULL,
    ts         timestamptz NOT NULL,
    PRIMARY KEY (site, room, device)
);

CREATE TABLE sessions (
    session        text PRIMARY KEY,
    site           text NOT NULL,
    room           text NOT NULL,
    program        text,
    version        text,
    sha256         text,
    patient_ref    text,
    operator       text,
    origin         text,
    course         jsonb,
    state          text,
    state_ts       timestamptz,
    created        timestamptz,
    ended          timestamptz,
    reason         text,
    totals         jsonb,
    events         integer NOT NULL DEFAULT 0,   -- event rows stored (kept by the writer)
    last_index     integer NOT NULL DEFAULT 0,   -- the highest index stored
    last_event_at  timestamptz,                  -- when the newest event row was stored
    incomplete     boolean NOT NULL DEFAULT false, -- a gap the hub could not fill (yet)
    checked_at     timestamptz                   -- the last `events` fill of this session
);
CREATE INDEX sessions_patient ON sessions (patient_ref, created);
CREATE INDEX sessions_room ON sessions (site, room, created);
CREATE INDEX sessions_created ON sessions (created);
CREATE INDEX sessions_with_holes ON sessions (last_event_at) WHERE events < last_index;

CREATE TABLE session_events (
    session   text NOT NULL,
    idx       integer NOT NULL CHECK (idx >= 1),
    site      text NOT NULL,
    room      text NOT NULL,
    event     text NOT NULL,
    boot      integer,
    seq       bigint,
    ts        timestamptz NOT NULL,
    msg_id    text,                      -- null for an event filled through `events`
    source    text NOT NULL,             -- mqtt | events
    data      jsonb NOT NULL,            -- the whole data object of the message
    PRIMARY KEY (session, idx)
);
CREATE INDEX session_events_event ON session_events (event, ts);
CREATE INDEX session_events_room ON session_events (site, room, boot, seq);

-- a delivery per point, from point_done
CREATE TABLE deliveries (
    session    text NOT NULL,
    idx        integer NOT NULL,
    site       text NOT NULL,
    room       text NOT NULL,
    step       text,
    zone       text,
    point      text,
    device     text,
    delivered  jsonb,
    ts         timestamptz NOT NULL,
    PRIMARY KEY (session, idx)
);

CREATE TABLE alarms (
    site      text NOT NULL,
    room      text NOT NULL,
    id        text NOT NULL,
    since     text NOT NULL,
    priority  text,
    source    text,
    code      text,
    text      text,
    latched   boolean,
    session   text,
    first_ts  timestamptz NOT NULL,    -- the first message that listed it
    cleared   timestamptz,             -- the first later list without it
    data      jsonb NOT NULL,
    PRIMARY KEY (site, room, id, since)
);
CREATE INDEX alarms_active ON alarms (site, room) WHERE cleared IS NULL;
CREATE INDEX alarms_session ON alarms (session);

CREATE TABLE adverse_events (
    session   text NOT NULL,
    idx       integer NOT NULL,
    site      text NOT NULL,
    room      text NOT NULL,
    kind      text,
    severity  text,
    score     integer,
    onset     text,
    note      text,
    by_name   text,
    action    text,
    ts        timestamptz NOT NULL,
    PRIMARY KEY (session, idx)
);

-- time-ordered, thinned readings
CREATE TABLE telemetry (
    ts      timestamptz NOT NULL,
    site    text NOT NULL,
    room    text NOT NULL,
    device  text NOT NULL,
    boot    integer,
    tseq    bigint,
    session text,
    data    jsonb NOT NULL
);
CREATE INDEX telemetry_ts ON telemetry USING brin (ts);

-- seq gaps found and what became of them
CREATE TABLE gaps (
    site       text NOT NULL,
    room       text NOT NULL,
    boot       integer NOT NULL,
    after_seq  bigint NOT NULL,
    before_seq bigint NOT NULL,
    found_at   timestamptz NOT NULL DEFAULT now(),
    tries      integer NOT NULL DEFAULT 0,
    closed_at  timestamptz,
    outcome    text,            -- filled | not_events | unanswered
    PRIMARY KEY (site, room, boot, after_seq)
);
