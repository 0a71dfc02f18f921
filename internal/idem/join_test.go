package idem_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/internal/idem"
)

func TestJoin(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 300)
	tests := []struct {
		name   string
		prefix string
		parts  []string
		want   string
	}{
		{"plain parts keep the documented shape", "action-grant", []string{"user42", "like"}, "action-grant:user42:like"},
		{"a colon inside a part is escaped", "action-grant", []string{"user42:companion7", "like"}, "action-grant:user42%3Acompanion7:like"},
		{"percent is escaped", "usage", []string{"a%3Ab"}, "usage:a%253Ab"},
		{"spaces and unicode are escaped", "usage", []string{"a b", "é"}, "usage:a%20b:%C3%A9"},
		{"no parts", "usage", nil, "usage"},
		{"one empty part", "usage", []string{""}, "usage:"},
		{"too long: hashed", "usage", []string{long}, "usage:%h"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := idem.Join(tt.prefix, tt.parts...)
			require.NoError(t, idem.Check(got))
			if strings.HasSuffix(tt.want, "%h") {
				assert.True(t, strings.HasPrefix(got, tt.want), got)
				return
			}
			assert.Equal(t, tt.want, got)
		})
	}
}

// The collisions the issue names: an SDK-made second attempt of event "m1"
// against a caller's event "m1:2", and a compound user id against a compound
// action id.
func TestJoinCollisionsOfTheIssue(t *testing.T) {
	t.Parallel()
	assert.NotEqual(t, idem.Join("usage", "c", "m1", "2"), idem.Join("usage", "c", "m1:2"))
	assert.NotEqual(t, idem.Join("action-grant", "user42:companion7", "like"), idem.Join("action-grant", "user42", "companion7:like"))
	assert.NotEqual(t, idem.Join("usage", "c", strings.Repeat("y", 300)), idem.Join("usage", "c", strings.Repeat("y", 301)))
}

// FuzzJoinInjective: two different part lists never give one key.
func FuzzJoinInjective(f *testing.F) {
	f.Add("m1", "2", "m1:2", "", uint8(3))
	f.Add("user42:companion7", "like", "user42", "companion7:like", uint8(0))
	f.Add("%3A", ":", "%", "3A:", uint8(1))
	f.Add(strings.Repeat("z", 260), "a", strings.Repeat("z", 261), "", uint8(2))
	f.Fuzz(func(t *testing.T, a1, a2, b1, b2 string, shape uint8) {
		// shape picks how many parts each side has, so lists of different
		// lengths are compared too.
		pick := func(x, y string, n uint8) []string {
			switch n % 3 {
			case 0:
				return []string{x}
			case 1:
				return []string{x, y}
			}
			return []string{x, y, "2"}
		}
		pa, pb := pick(a1, a2, shape), pick(b1, b2, shape/3)
		ka, kb := idem.Join("usage", pa...), idem.Join("usage", pb...)
		if err := idem.Check(ka); err != nil {
			t.Fatalf("Join(%q) = %q: %v", pa, ka, err)
		}
		if ka == kb && !slices.Equal(pa, pb) {
			t.Fatalf("Join(%q) == Join(%q) == %q", pa, pb, ka)
		}
	})
}
