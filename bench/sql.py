"""The SQL statements of the benchmark (bench/) and of the test suite's invariant check
(tests/support/invariants.py): never run by the product, so not shipped in it
(services/chancepay/core/sql.py holds the product's own, and these use its schema)."""

# --------------------------------------------------------------------------- test suite
# Every payment of a small database (the test suite's invariant check).
ALL_REQUEST_UUIDS = "SELECT uuid FROM request"
ALL_INBOX_UUIDS = "SELECT uuid FROM inbox"

# --------------------------------------------------------------------------- benchmarks
PENDING_COUNT = "SELECT COUNT(*) FROM request WHERE succeed IS NULL"
BUFFER_POOL_SIZE = "SELECT @@innodb_buffer_pool_size"
SERVER_FACTS = (
    "SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@log_bin, "
    "@@innodb_doublewrite, @@innodb_flush_method, @@innodb_buffer_pool_size, "
    "@@innodb_log_file_size, @@max_connections"
)
USE_DATABASE = "USE `{db}`"  # identifiers validated by the caller
DROP_DATABASE = "DROP DATABASE IF EXISTS `{db}`"
DROP_USER = "DROP USER IF EXISTS %s@'%%'"
DATABASE_EXISTS = "SHOW DATABASES LIKE %s"
# History for the benchmark's history step: finalized payments that happened before the run,
# with UUIDv7 keys whose millisecond timestamps (`%s` = the first row's Unix milliseconds minus 1)
# are one millisecond apart and older than any new payment's, generated inside the server from
# MariaDB's SEQUENCE engine (seq_<first>_to_<last>, integers validated by the caller).
_HISTORY_ROWS = (
    "SELECT CONCAT(SUBSTR(h, 1, 8), '-', SUBSTR(h, 9, 4), '-7', SUBSTR(r, 1, 3), '-8', SUBSTR(r, 4, 3), '-',"
    " SUBSTR(r, 7, 12)) AS uuid, 'history' AS cus_id, 1.00 AS amount, MOD(seq, 2) AS succeed, made_at"
    " FROM (SELECT seq, LPAD(LOWER(HEX(%s + seq)), 12, '0') AS h, LPAD(LOWER(HEX(seq)), 18, '0') AS r,"
    " FROM_UNIXTIME((%s + seq) / 1000) AS made_at FROM seq_{first}_to_{last}) AS s"
)
PREFILL_REQUESTS = (
    "INSERT INTO request (uuid, cus_id, amount, succeed, created_at, finalized_at) "
    f"SELECT uuid, cus_id, amount, succeed, made_at, made_at FROM ({_HISTORY_ROWS}) AS history"
)
PREFILL_INBOX = (
    "INSERT INTO inbox (uuid, cus_id, amount, succeed, created_at, finalized_at) "
    f"SELECT uuid, cus_id, amount, succeed, made_at, made_at FROM ({_HISTORY_ROWS}) AS history"
)
ANALYZE_TABLE = "ANALYZE TABLE {table}"  # request or inbox: refreshes the sizes TABLE_BYTES reads
TABLE_BYTES = (
    "SELECT table_name, data_length + index_length FROM information_schema.tables "
    "WHERE table_schema = DATABASE() AND table_name IN ('request', 'inbox')"
)

# --------------------------------------------------------------------------- bench.audit_history
# A fixed window of new finalized payments for the online audit's pass (uuids of their own, never a
# history row's), created now; `{table}` request or inbox, `{last}` an integer (validated by the caller).
CREATE_DATABASE = "CREATE DATABASE `{db}`"  # identifiers validated by the caller
COUNT_ROWS = "SELECT COUNT(*) FROM {table}"
EXPLAIN = "EXPLAIN {statement}"  # one of the product's own statements (core/sql.py)
AUDIT_WINDOW_DELETE = "DELETE FROM {table} WHERE uuid LIKE '00000000-0000-4000-8000-%'"
AUDIT_WINDOW_START = "SELECT NOW(6) - INTERVAL 1 MICROSECOND"
AUDIT_WINDOW_ROWS = (
    "INSERT INTO {table} (uuid, cus_id, amount, succeed, finalized_at) "
    "SELECT CONCAT('00000000-0000-4000-8000-', LPAD(seq, 12, '0')), 'window', 1.00, MOD(seq, 2), NOW(6) "
    "FROM seq_1_to_{last}"
)
