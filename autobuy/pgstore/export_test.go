package pgstore

// Table exposes a table's qualified name to the tests.
func (s *Store) Table(name string) string { return s.table(name) }

// Esc and Unesc expose the text escaping to the tests.
var Esc, Unesc = esc, unesc

// LockID exposes the advisory lock key of a lock.
func (s *Store) LockID(key string) int64 { return s.lockID(key) }
