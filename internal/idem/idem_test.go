package idem_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/quotastack/quotastack-go/internal/idem"
)

func TestNew(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 1000 {
		k := idem.New()
		assert.True(t, strings.HasPrefix(k, "qsk_"), k)
		assert.Len(t, k, len("qsk_")+26, "26 base32 characters carry 128+ bits")
		assert.NoError(t, idem.Check(k))
		assert.False(t, seen[k], "duplicate key %s", k)
		seen[k] = true
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		key  string
		ok   bool
	}{
		{"business key", "usage:msg_123", true},
		{"compound key", "plan-grant:starter:ord_1", true},
		{"punctuation", "pay_abc123-grant/~!@#$%^&*()", true},
		{"max length", strings.Repeat("k", idem.MaxKeyLen), true},
		{"empty", "", false},
		{"too long", strings.Repeat("k", idem.MaxKeyLen+1), false},
		{"space", "usage: 1", false},
		{"tab", "usage:\t1", false},
		{"newline (header injection)", "k\r\nX-API-Key: x", false},
		{"NUL", "k\x00", false},
		{"DEL", "k\x7f", false},
		{"non-ASCII", "clé", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := idem.Check(tt.key)
			if tt.ok {
				assert.NoError(t, err)
			} else {
				assert.Error(t, err)
			}
		})
	}
}
