"""Every SQL statement ChancePay runs, in one place.

Ages are always computed by the database clock (NOW(6)), never a process clock,
so two processes on two machines agree on what "older than 60 s" means.

The statements that carry a payment's fields take their column lists from core/payment.py
(COLUMNS), so a field declared there is written and read everywhere; rows are read by column
name (core/db.py named), never by position. The migrations' DDL is history and stays literal.
"""

from chancepay.core.payment import COLUMNS

# A payment's declared columns, for the statements below: "cus_id, amount" and "%s, %s" today.
_FIELDS = ", ".join(COLUMNS)
_FIELD_PLACEHOLDERS = ", ".join(["%s"] * len(COLUMNS))


def among(statement: str, count: int, **identifiers: str) -> str:
    """`statement` with its `IN ({placeholders})` list written for `count` values (and any other
    identifier it names, validated by the caller)."""
    return statement.format(placeholders=", ".join(["%s"] * count), **identifiers)


_R_FIELDS = ", ".join(f"r.{c}" for c in COLUMNS)

# --------------------------------------------------------------------------- schema
# The statements of each schema's versioned migrations (core/migrations.py says which version
# runs which). Every statement is idempotent: a migrate interrupted between a statement and its
# version row runs it again harmlessly.
ORCHESTRATOR_V1 = (
    """
    CREATE TABLE IF NOT EXISTS request (
        uuid CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
        cus_id VARCHAR(64) CHARACTER SET ascii NOT NULL,
        amount DECIMAL(18,2) NOT NULL,
        succeed BOOLEAN NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        finalized_at DATETIME(6) NULL,
        idempotency_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL,
        request_hash CHAR(64) CHARACTER SET ascii NULL,
        UNIQUE KEY uq_request_idempotency_key (idempotency_key),
        KEY ix_request_pending (succeed, created_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE IF NOT EXISTS outbox (
        uuid CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
        payload VARBINARY(2048) NOT NULL,
        attempts INT NOT NULL DEFAULT 0,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        next_attempt_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        claimed_by VARCHAR(64) CHARACTER SET ascii NULL,
        last_error VARCHAR(512) NULL,
        KEY ix_outbox_due (next_attempt_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
)

# The operator trail (core/trail.py; CONTRACT.md "Audit"): one row per run of an operator command
# that changes state, appended after the action with its result, never updated or deleted. The
# uuids it named or acted on are also rows of operator_action_uuid, each with what happened to it,
# so `chancepay trace UUID` finds a payment's actions by its primary key's prefix.
ORCHESTRATOR_V2 = (
    """
    CREATE TABLE IF NOT EXISTS operator_action (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        who VARCHAR(128) NOT NULL,
        command VARCHAR(32) CHARACTER SET ascii NOT NULL,
        arguments MEDIUMTEXT NOT NULL,
        uuids MEDIUMTEXT NOT NULL,
        result VARCHAR(16) CHARACTER SET ascii NOT NULL,
        detail MEDIUMTEXT NOT NULL,
        KEY ix_operator_action_at (at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE IF NOT EXISTS operator_action_uuid (
        uuid CHAR(36) CHARACTER SET ascii NOT NULL,
        action_id BIGINT NOT NULL,
        outcome VARCHAR(32) CHARACTER SET ascii NOT NULL,
        PRIMARY KEY (uuid, action_id),
        KEY ix_operator_action_uuid_action (action_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
)

WALLET_V1 = (
    """
    CREATE TABLE IF NOT EXISTS inbox (
        uuid CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
        cus_id VARCHAR(64) CHARACTER SET ascii NOT NULL,
        amount DECIMAL(18,2) NOT NULL,
        succeed BOOLEAN NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        finalized_at DATETIME(6) NULL,
        deliveries INT NOT NULL DEFAULT 1
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
)
# Results the wallet decided but could not deliver yet: retried in the background until the
# orchestrator takes them (durable, so a wallet restart does not hand them to the reconciler).
WALLET_V2 = (
    """
    CREATE TABLE IF NOT EXISTS pending_callback (
        uuid CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
        succeed BOOLEAN NOT NULL,
        attempts INT NOT NULL DEFAULT 0,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        next_attempt_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        last_error VARCHAR(512) NULL,
        KEY ix_pending_callback_due (next_attempt_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
)

# Dead letters, kept by the wallet: it moves each message of chancepay.payments.dlq into this table
# (acking only after the commit), so an operator's look is a SELECT and never a broker delivery
# (README "Dead letters"). `dedup_key` (SHA-256 of the body, message id and first death) makes a
# redelivered copy of the same dead letter one row.
WALLET_V3 = (
    """
    CREATE TABLE IF NOT EXISTS dead_letter (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        dedup_key CHAR(64) CHARACTER SET ascii NOT NULL,
        uuid CHAR(36) CHARACTER SET ascii NULL,
        message_id VARCHAR(255) NULL,
        reason VARCHAR(64) NULL,
        source_queue VARCHAR(255) NULL,
        death_count INT NULL,
        dead_lettered_at DATETIME(6) NULL,
        delivery_count INT NOT NULL DEFAULT 0,
        headers MEDIUMTEXT NOT NULL,
        body MEDIUMBLOB NOT NULL,
        stored_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        UNIQUE KEY ux_dead_letter_key (dedup_key),
        KEY ix_dead_letter_uuid (uuid)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
)

# The online audit (`chancepay auditor`) reads the inbox rows written since its checkpoint: an index
# on created_at keeps that read flat with the table's history.
WALLET_V4 = ("ALTER TABLE inbox ADD KEY ix_inbox_created (created_at)",)
# Orchestrator v4: the online audit pages new requests by (created_at, uuid) (ix_request_pending
# leads with succeed); online, without blocking writes.
ORCHESTRATOR_V4 = ("ALTER TABLE request ADD KEY ix_request_created (created_at, uuid), ALGORITHM=INPLACE, LOCK=NONE",)

# The migrations' own bookkeeping, one table per schema.
CREATE_SCHEMA_VERSION = """
    CREATE TABLE IF NOT EXISTS schema_version (
        version INT NOT NULL PRIMARY KEY,
        description VARCHAR(200) NOT NULL,
        applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
SCHEMA_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_version"
RECORD_SCHEMA_VERSION = "INSERT IGNORE INTO schema_version (version, description) VALUES (%s, %s)"
# Version 5 of both schemas: each version row says the oldest code that runs on the schema once it
# is applied (core/migrations.py Migration.oldest_code; 0: an expansion, any earlier code runs).
ADD_SCHEMA_FLOOR = ("ALTER TABLE schema_version ADD COLUMN oldest_code INT NOT NULL DEFAULT 0",)
RECORD_SCHEMA_VERSION_WITH_FLOOR = (
    "INSERT IGNORE INTO schema_version (version, description, oldest_code) VALUES (%s, %s, %s)"
)
# The highest oldest_code of the versions newer than the reader's code (a rollback's question).
SCHEMA_FLOOR_ABOVE = "SELECT COALESCE(MAX(oldest_code), 0) FROM schema_version WHERE version > %s"
# One migrate at a time per database, whatever the number of pods running it (a session lock).
MIGRATE_LOCK = "SELECT GET_LOCK(CONCAT('chancepay-migrate:', DATABASE()), %s)"
MIGRATE_UNLOCK = "SELECT RELEASE_LOCK(CONCAT('chancepay-migrate:', DATABASE()))"
COLUMN_EXISTS = (
    "SELECT COUNT(*) FROM information_schema.columns "
    "WHERE table_schema = DATABASE() AND table_name = %s AND column_name = %s"
)
INDEX_EXISTS = (
    "SELECT COUNT(*) FROM information_schema.statistics "
    "WHERE table_schema = DATABASE() AND table_name = %s AND index_name = %s"
)

STRICT_MODE_CHECK = "SELECT @@SESSION.sql_mode"
PING = "SELECT 1"
# What an acknowledged commit's durability rests on (core/durability.py judges it). Global
# values: a session cannot change them, and they need no privilege to read.
DURABILITY_SETTINGS = (
    "SELECT @@GLOBAL.innodb_flush_log_at_trx_commit AS innodb_flush_log_at_trx_commit,"
    " @@GLOBAL.sync_binlog AS sync_binlog, @@GLOBAL.log_bin AS log_bin,"
    " @@GLOBAL.innodb_doublewrite AS innodb_doublewrite"
)
# Every new connection (core/db.py): READ COMMITTED, so the scanner's FOR UPDATE SKIP LOCKED range
# scan takes no gap locks and cannot deadlock with the API's outbox inserts.
SESSION_ISOLATION = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"


# Admin-only statements (migrate with CHANCEPAY_ADMIN_DB). Identifiers are validated by the caller.
CREATE_DATABASE = "CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4"
CREATE_USER = "CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s"
ALTER_USER_PASSWORD = "ALTER USER %s@'%%' IDENTIFIED BY %s"
GRANT_ALL_ON_DB = "GRANT ALL PRIVILEGES ON `{db}`.* TO %s@'%%'"

# --------------------------------------------------------------------------- orchestrator
INSERT_REQUEST = (
    f"INSERT INTO request (uuid, {_FIELDS}, idempotency_key, request_hash) VALUES (%s, {_FIELD_PLACEHOLDERS}, %s, %s)"
)
INSERT_OUTBOX = "INSERT INTO outbox (uuid, payload) VALUES (%s, %s)"
SELECT_REQUEST = f"SELECT uuid, {_FIELDS}, succeed, created_at, finalized_at FROM request WHERE uuid = %s"
SELECT_REQUEST_BY_IDEMPOTENCY_KEY = (
    f"SELECT uuid, {_FIELDS}, succeed, created_at, finalized_at, request_hash FROM request WHERE idempotency_key = %s"
)
# Group commit (orchestrator/service.py, PaymentService.create_group): in one transaction, the
# stored rows of the group's idempotency keys (those items are answered from them, not inserted),
# then one multi-row INSERT per table, then COMMIT.
SELECT_REQUESTS_BY_IDEMPOTENCY_KEYS = (
    f"SELECT uuid, {_FIELDS}, succeed, created_at, finalized_at, request_hash, idempotency_key "
    "FROM request WHERE idempotency_key IN ({placeholders})"
)
INSERT_REQUEST_ROWS = f"INSERT INTO request (uuid, {_FIELDS}, idempotency_key, request_hash) VALUES {{rows}}"
_REQUEST_ROW = f"(%s, {_FIELD_PLACEHOLDERS}, %s, %s)"
INSERT_OUTBOX_ROWS = "INSERT INTO outbox (uuid, payload) VALUES {rows}"


def request_rows(count: int) -> str:
    """INSERT_REQUEST_ROWS for `count` rows."""
    return INSERT_REQUEST_ROWS.format(rows=", ".join([_REQUEST_ROW] * count))


def outbox_rows(count: int) -> str:
    """INSERT_OUTBOX_ROWS for `count` rows."""
    return INSERT_OUTBOX_ROWS.format(rows=", ".join(["(%s, %s)"] * count))


# Write-once finalization (orchestrator/service.py finalize, a batch; a single result is a batch of
# one), one transaction: lock the batch's rows (primary-key order, so two batches cannot deadlock),
# finalize the pending ones per value (a row already final is never touched again), read the
# stored rows back.
LOCK_REQUESTS = "SELECT uuid, succeed FROM request WHERE uuid IN ({placeholders}) FOR UPDATE"
FINALIZE_REQUESTS = (
    "UPDATE request SET succeed = %s, finalized_at = NOW(6) WHERE uuid IN ({placeholders}) AND succeed IS NULL"
)
SELECT_REQUESTS = (
    f"SELECT uuid, {_FIELDS}, succeed, created_at, finalized_at FROM request WHERE uuid IN ({{placeholders}})"
)

OUTBOX_STATS = (
    "SELECT COUNT(*), COALESCE(TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)), 0), "
    "COALESCE(SUM(attempts >= %s), 0) FROM outbox"
)
PENDING_STATS = (
    "SELECT COUNT(*), COALESCE(TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)), 0) "
    "FROM request WHERE succeed IS NULL"
)

# --------------------------------------------------------------------------- scanner
# Claim due rows in a short transaction and push next_attempt_at past the lease, so another
# scanner skips them (SKIP LOCKED while we hold them, the lease after we commit). No row lock is
# held while publishing.
CLAIM_OUTBOX = (
    "SELECT uuid, payload, attempts FROM outbox "
    "WHERE next_attempt_at <= NOW(6) AND attempts < %s "
    "ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED"
)
LEASE_OUTBOX = (
    "UPDATE outbox SET next_attempt_at = NOW(6) + INTERVAL %s MICROSECOND, claimed_by = %s "
    "WHERE uuid IN ({placeholders})"
)
DELETE_OUTBOX = "DELETE FROM outbox WHERE uuid IN ({placeholders})"
# The idle scanner's probe, a plain read in autocommit (one round trip, no lock): is anything due?
OUTBOX_DUE = "SELECT 1 FROM outbox WHERE next_attempt_at <= NOW(6) AND attempts < %s LIMIT 1"
RECORD_OUTBOX_FAILURE = (
    "UPDATE outbox SET attempts = attempts + 1, last_error = %s, claimed_by = NULL, "
    "next_attempt_at = NOW(6) + INTERVAL %s MICROSECOND WHERE uuid = %s"
)
# A confirm that did not come in time is not a failed attempt (see scanner.counts_as_attempt).
RECORD_OUTBOX_RETRY = (
    "UPDATE outbox SET last_error = %s, claimed_by = NULL, "
    "next_attempt_at = NOW(6) + INTERVAL %s MICROSECOND WHERE uuid = %s"
)

# --------------------------------------------------------------------------- wallet
# The common path is one statement: the coin was flipped in memory and the row is inserted
# already final. Only if the uuid exists (a redelivery) does the wallet lock and read it.
INSERT_INBOX_DECIDED = (
    f"INSERT IGNORE INTO inbox (uuid, {_FIELDS}, succeed, finalized_at) VALUES (%s, {_FIELD_PLACEHOLDERS}, %s, NOW(6))"
)
LOCK_INBOX = f"SELECT {_FIELDS}, succeed, deliveries FROM inbox WHERE uuid = %s FOR UPDATE"
FINALIZE_INBOX = "UPDATE inbox SET succeed = %s, finalized_at = NOW(6) WHERE uuid = %s AND succeed IS NULL"
COUNT_INBOX_DELIVERY = "UPDATE inbox SET deliveries = deliveries + 1 WHERE uuid = %s"
# A window of deliveries (wallet/window.py): one multi-row INSERT IGNORE of rows already final,
# uuids distinct and sorted (one lock order for every wallet). Fewer rows inserted than sent (a
# redelivery in the window): ROLLBACK, and the window is decided row by row in the same connection.
INSERT_INBOX_DECIDED_ROWS = f"INSERT IGNORE INTO inbox (uuid, {_FIELDS}, succeed, finalized_at) VALUES {{rows}}"
_INBOX_DECIDED_ROW = f"(%s, {_FIELD_PLACEHOLDERS}, %s, NOW(6))"
ROLLBACK = "ROLLBACK"


def inbox_decided_rows(count: int) -> str:
    """INSERT_INBOX_DECIDED_ROWS for `count` rows."""
    return INSERT_INBOX_DECIDED_ROWS.format(rows=", ".join([_INBOX_DECIDED_ROW] * count))


SELECT_INBOX = "SELECT uuid, succeed FROM inbox WHERE uuid = %s"

# Parked callbacks. INSERT IGNORE: a redelivery of a message already parked changes nothing.
PARK_CALLBACK = (
    "INSERT IGNORE INTO pending_callback (uuid, succeed, next_attempt_at, last_error) "
    "VALUES (%s, %s, NOW(6) + INTERVAL %s MICROSECOND, %s)"
)
CLAIM_CALLBACKS = (
    "SELECT uuid, succeed, attempts FROM pending_callback WHERE next_attempt_at <= NOW(6) "
    "ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED"
)
LEASE_CALLBACKS = (
    "UPDATE pending_callback SET next_attempt_at = NOW(6) + INTERVAL %s MICROSECOND WHERE uuid IN ({placeholders})"
)
DELETE_CALLBACKS = "DELETE FROM pending_callback WHERE uuid IN ({placeholders})"
RESCHEDULE_CALLBACK = (
    "UPDATE pending_callback SET attempts = attempts + 1, last_error = %s, "
    "next_attempt_at = NOW(6) + INTERVAL %s MICROSECOND WHERE uuid = %s"
)
PENDING_CALLBACK_STATS = (
    "SELECT COUNT(*), COALESCE(TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)), 0) FROM pending_callback"
)

# --------------------------------------------------------------------------- operator commands
_OUTBOX_COLUMNS = (
    "SELECT uuid, attempts, TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)), "
    "GREATEST(0, TIMESTAMPDIFF(MICROSECOND, NOW(6), next_attempt_at)), last_error FROM outbox"
)
LIST_OUTBOX = _OUTBOX_COLUMNS + " ORDER BY created_at LIMIT 1000"
LIST_OUTBOX_EXHAUSTED = _OUTBOX_COLUMNS + " WHERE attempts >= %s ORDER BY created_at LIMIT 1000"
# Back into rotation: only rows at the limit (a row still being retried keeps its schedule).
RETRY_EXHAUSTED_OUTBOX = (
    "UPDATE outbox SET attempts = 0, next_attempt_at = NOW(6), claimed_by = NULL "
    "WHERE attempts >= %s AND uuid IN ({placeholders})"
)
RETRY_ALL_EXHAUSTED_OUTBOX = (
    "UPDATE outbox SET attempts = 0, next_attempt_at = NOW(6), claimed_by = NULL WHERE attempts >= %s"
)
OUTBOX_AMONG = "SELECT uuid FROM outbox WHERE uuid IN ({placeholders})"
TRACE_OUTBOX = (
    "SELECT attempts, GREATEST(0, TIMESTAMPDIFF(MICROSECOND, NOW(6), next_attempt_at)), last_error "
    "FROM outbox WHERE uuid = %s"
)
TRACE_INBOX = "SELECT succeed, deliveries, created_at, finalized_at FROM inbox WHERE uuid = %s"
TRACE_PENDING_CALLBACK = "SELECT attempts, last_error FROM pending_callback WHERE uuid = %s"
# What a retry acts on (`outbox retry`, its --dry-run too): the exhausted rows among the named
# uuids, or all of them. The real run locks them, resets exactly those, and names them in the trail.
_EXHAUSTED_OUTBOX = "SELECT uuid, attempts, last_error FROM outbox WHERE attempts >= %s"
EXHAUSTED_OUTBOX_AMONG = _EXHAUSTED_OUTBOX + " AND uuid IN ({placeholders}) ORDER BY created_at"
ALL_EXHAUSTED_OUTBOX = _EXHAUSTED_OUTBOX + " ORDER BY created_at"
LOCK_EXHAUSTED_OUTBOX_AMONG = EXHAUSTED_OUTBOX_AMONG + " FOR UPDATE"
LOCK_ALL_EXHAUSTED_OUTBOX = ALL_EXHAUSTED_OUTBOX + " FOR UPDATE"

# --------------------------------------------------------------------------- operator trail
# Append-only (core/trail.py): the product has INSERTs and SELECTs on these tables, nothing else.
INSERT_OPERATOR_ACTION = (
    "INSERT INTO operator_action (who, command, arguments, uuids, result, detail) VALUES (%s, %s, %s, %s, %s, %s)"
)
INSERT_OPERATOR_ACTION_UUIDS = "INSERT INTO operator_action_uuid (uuid, action_id, outcome) VALUES {rows}"


def operator_action_uuid_rows(count: int) -> str:
    """INSERT_OPERATOR_ACTION_UUIDS for `count` rows."""
    return INSERT_OPERATOR_ACTION_UUIDS.format(rows=", ".join(["(%s, %s, %s)"] * count))


# Both tables there (the orchestrator schema at v2): checked before an operator command changes anything.
OPERATOR_TRAIL_READY = "SELECT a.id FROM operator_action a JOIN operator_action_uuid u ON u.action_id = a.id LIMIT 0"
TRACE_OPERATOR_ACTIONS = (
    "SELECT a.id, a.at, a.who, a.command, a.arguments, a.result, a.detail, u.outcome "
    "FROM operator_action_uuid u JOIN operator_action a ON a.id = u.action_id WHERE u.uuid = %s ORDER BY a.id"
)

# --------------------------------------------------------------------------- reconcile
SELECT_STALE_PENDING = (
    f"SELECT r.uuid, {_R_FIELDS}, (o.uuid IS NOT NULL) AS in_outbox "
    "FROM request r LEFT JOIN outbox o ON o.uuid = r.uuid "
    "WHERE r.succeed IS NULL AND r.created_at < NOW(6) - INTERVAL %s MICROSECOND "
    "ORDER BY r.created_at LIMIT %s"
)
REENQUEUE_OUTBOX = "INSERT IGNORE INTO outbox (uuid, payload) VALUES (%s, %s)"

# --------------------------------------------------------------------------- dead letters
_DL_FIELDS = (
    "id, dedup_key, uuid, message_id, reason, source_queue, death_count, dead_lettered_at, delivery_count, "
    "headers, body, stored_at"
)
STORE_DEAD_LETTER = (
    "INSERT IGNORE INTO dead_letter (dedup_key, uuid, message_id, reason, source_queue, death_count, "
    "dead_lettered_at, delivery_count, headers, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
LIST_DEAD_LETTERS = f"SELECT {_DL_FIELDS} FROM dead_letter ORDER BY id LIMIT %s"
DELETE_DEAD_LETTER = "DELETE FROM dead_letter WHERE id = %s"
# `dlq purge --all` (and its --dry-run): every row's key, locked by the real run, then deleted by id in
# one transaction, so the trail names exactly the rows that went (a row the wallet adds meanwhile stays).
DEAD_LETTER_KEYS = "SELECT id, uuid, message_id FROM dead_letter ORDER BY id"
LOCK_DEAD_LETTER_KEYS = DEAD_LETTER_KEYS + " FOR UPDATE"
LOCK_DEAD_LETTERS_AMONG = (
    "SELECT id, uuid, message_id FROM dead_letter WHERE id IN ({placeholders}) ORDER BY id FOR UPDATE"
)
DELETE_DEAD_LETTERS_AMONG = "DELETE FROM dead_letter WHERE id IN ({placeholders})"
COUNT_DEAD_LETTERS = "SELECT COUNT(*) FROM dead_letter"

# --------------------------------------------------------------------------- audit and load
# (the benchmark's and the test suite's own statements are in bench/sql.py, outside the product)
# The invariant check (audit.py) reads (uuid, succeed) from each schema through its own user.
SUCCEED_BY_UUID = "SELECT uuid, succeed FROM {table} WHERE uuid IN ({placeholders})"  # table: request|inbox
RECENT_REQUESTS = "SELECT uuid, succeed FROM request WHERE created_at >= NOW(6) - INTERVAL %s MICROSECOND"
RECENT_INBOX = "SELECT uuid, succeed FROM inbox WHERE created_at >= NOW(6) - INTERVAL %s MICROSECOND"
STALE_OUTBOX = "SELECT uuid, attempts FROM outbox WHERE created_at < NOW(6) - INTERVAL %s MICROSECOND"
STALE_PENDING_IN_WINDOW = (
    "SELECT uuid FROM request WHERE succeed IS NULL AND created_at < NOW(6) - INTERVAL %s MICROSECOND "
    "AND created_at >= NOW(6) - INTERVAL %s MICROSECOND"
)
PENDING_AMONG = "SELECT uuid FROM request WHERE succeed IS NULL AND uuid IN ({placeholders})"
# The online audit (auditor/auditor.py): what was written since its checkpoint less an overlap, by
# each database's own clock, paged in (created_at, uuid) order (keyset: rows sharing one instant are
# never skipped) through a covering index: request's ix_request_created (created_at, uuid), inbox's
# ix_inbox_created (created_at; InnoDB appends the primary key uuid). Args: (created_at, created_at,
# uuid, limit) of the last row of the previous page.
AUDIT_START = "SELECT NOW(6), @@innodb_lock_wait_timeout"
AUDIT_SCAN_REQUESTS = (
    "SELECT uuid, created_at FROM request WHERE created_at >= %s AND (created_at > %s OR uuid > %s) "
    "ORDER BY created_at, uuid LIMIT %s"
)
AUDIT_SCAN_INBOX = (
    "SELECT uuid, created_at FROM inbox WHERE created_at >= %s AND (created_at > %s OR uuid > %s) "
    "ORDER BY created_at, uuid LIMIT %s"
)
AUDIT_AMONG = "SELECT uuid, succeed, amount FROM {table} WHERE uuid IN ({placeholders})"  # table: request|inbox
AUDIT_STALE_PENDING = (
    "SELECT uuid FROM request WHERE succeed IS NULL AND created_at < NOW(6) - INTERVAL %s MICROSECOND "
    "ORDER BY created_at LIMIT %s"
)
AUDIT_STALE_OUTBOX = (
    "SELECT uuid, attempts FROM outbox WHERE created_at < NOW(6) - INTERVAL %s MICROSECOND ORDER BY created_at LIMIT %s"
)
AUDIT_OUTBOX_AMONG = "SELECT uuid, attempts FROM outbox WHERE uuid IN ({placeholders})"
OUTBOX_DEPTH = "SELECT COUNT(*) FROM outbox"
RESULTS_AMONG = (
    "SELECT succeed, TIMESTAMPDIFF(MICROSECOND, created_at, finalized_at) FROM request WHERE uuid IN ({placeholders})"
)

# --------------------------------------------------------------------------- API clients
# Orchestrator schema v3 (core/migrations.py; CONTRACT.md "Clients"): who may use the public API.
# A key is stored only as the SHA-256 of its text (core/clients.py says why not bcrypt/argon2).
# `request.client_id` is the owner, 0 for a payment made with the API open (CHANCEPAY_API_AUTH=off)
# or before this version: NOT NULL, because a unique index treats NULLs as distinct, and the
# idempotency keys of ownerless payments must stay unique among themselves. The unique index
# becomes (idempotency_key, client_id): a key is unique per client, and a look-up by key still
# uses the index's prefix. The CREATEs are idempotent themselves; the ALTERs below are separate
# steps, each with its own guard (one ALTER doing all three would rebuild the table under a lock).
ORCHESTRATOR_V3 = (
    """
    CREATE TABLE IF NOT EXISTS api_client (
        id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        UNIQUE KEY uq_api_client_name (name)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE IF NOT EXISTS api_key (
        key_id CHAR(12) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
        client_id INT UNSIGNED NOT NULL,
        key_hash CHAR(64) CHARACTER SET ascii NOT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        revoked_at DATETIME(6) NULL,
        KEY ix_api_key_client (client_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
)
# Orchestrator v3 on `request`: three steps, each guarded on its own (core/migrations.py Step), so a
# migrate stopped between them finishes the rest. Online: the column is a metadata change (INSTANT:
# MariaDB >= 10.4, MySQL >= 8.0.29; else the INPLACE form), the unique key is built while writes go
# on, the old index is dropped last (until then both hold, the old one the stricter).
V3_ADD_CLIENT_ID = "ALTER TABLE request ADD COLUMN client_id INT UNSIGNED NOT NULL DEFAULT 0, ALGORITHM=INSTANT"
V3_ADD_CLIENT_ID_INPLACE = (
    "ALTER TABLE request ADD COLUMN client_id INT UNSIGNED NOT NULL DEFAULT 0, ALGORITHM=INPLACE, LOCK=NONE"
)
V3_ADD_UNIQUE_PER_CLIENT = (
    "ALTER TABLE request ADD UNIQUE KEY uq_request_idempotency_key_client (idempotency_key, client_id), "
    "ALGORITHM=INPLACE, LOCK=NONE"
)
V3_DROP_UNIQUE_KEY = "ALTER TABLE request DROP INDEX uq_request_idempotency_key, ALGORITHM=INPLACE, LOCK=NONE"
# How long a migrate's DDL waits for a table's metadata lock (held by any open transaction on it)
# before it fails with 1205 and migrate retries: while a DDL waits, every statement on the table
# queues behind it, so the wait is bounded instead of the server's default of a year.
MIGRATE_LOCK_WAIT = "SET SESSION lock_wait_timeout = %s"
INSERT_CLIENT = "INSERT IGNORE INTO api_client (name) VALUES (%s)"
SELECT_CLIENT = "SELECT id, name FROM api_client WHERE name = %s"
INSERT_KEY = "INSERT INTO api_key (key_id, client_id, key_hash) VALUES (%s, %s, %s)"
INSERT_KEY_IF_NEW = "INSERT IGNORE INTO api_key (key_id, client_id, key_hash) VALUES (%s, %s, %s)"
# What the API's key cache reads: one row per key id (revoked ones too: the cache remembers the refusal).
SELECT_KEY = (
    "SELECT k.key_id, k.key_hash, k.revoked_at, c.id AS client_id, c.name AS client_name "
    "FROM api_key k JOIN api_client c ON c.id = k.client_id WHERE k.key_id = %s"
)
LIST_CLIENT_KEYS = (
    "SELECT c.name, c.created_at AS client_created_at, k.key_id, k.created_at, k.revoked_at "
    "FROM api_client c LEFT JOIN api_key k ON k.client_id = c.id ORDER BY c.name, k.created_at, k.key_id"
)
REVOKE_KEY = "UPDATE api_key SET revoked_at = NOW(6) WHERE client_id = %s AND key_id = %s AND revoked_at IS NULL"
REVOKE_CLIENT_KEYS = "UPDATE api_key SET revoked_at = NOW(6) WHERE client_id = %s AND revoked_at IS NULL"
SELECT_CLIENT_KEY = "SELECT key_id, revoked_at FROM api_key WHERE client_id = %s AND key_id = %s"
# The API's payment statements with the owner (CHANCEPAY_API_AUTH=required compares it).
INSERT_OWNED_REQUEST = (
    f"INSERT INTO request (uuid, {_FIELDS}, idempotency_key, request_hash, client_id) "
    f"VALUES (%s, {_FIELD_PLACEHOLDERS}, %s, %s, %s)"
)
INSERT_OWNED_REQUEST_ROWS = (
    f"INSERT INTO request (uuid, {_FIELDS}, idempotency_key, request_hash, client_id) VALUES {{rows}}"
)
_OWNED_REQUEST_ROW = f"(%s, {_FIELD_PLACEHOLDERS}, %s, %s, %s)"
SELECT_OWNED_REQUEST = (
    f"SELECT uuid, {_FIELDS}, succeed, created_at, finalized_at, client_id FROM request WHERE uuid = %s"
)
SELECT_REQUEST_BY_CLIENT_KEY = (
    f"SELECT uuid, {_FIELDS}, succeed, created_at, finalized_at, request_hash FROM request "
    "WHERE idempotency_key = %s AND client_id = %s"
)
SELECT_REQUESTS_BY_CLIENT_KEYS = (
    f"SELECT uuid, {_FIELDS}, succeed, created_at, finalized_at, request_hash, idempotency_key, client_id "
    "FROM request WHERE idempotency_key IN ({placeholders})"
)


def owned_request_rows(count: int) -> str:
    """INSERT_OWNED_REQUEST_ROWS for `count` rows."""
    return INSERT_OWNED_REQUEST_ROWS.format(rows=", ".join([_OWNED_REQUEST_ROW] * count))
