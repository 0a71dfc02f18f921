package quotastack

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

const redactKey = "qs_test_SECRETsecret0123456789"

// jsonUnicodeEscape writes every byte of s as \u00XX, the way a JSON encoder
// that escapes everything would.
func jsonUnicodeEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, `\u%04x`, s[i])
	}
	return b.String()
}

func TestRedactorForms(t *testing.T) {
	t.Parallel()
	r := newRedactor(redactKey)
	secret := strings.TrimPrefix(redactKey, "qs_test_")
	jsonKey, _ := json.Marshal(redactKey)
	tests := []struct {
		name, in string
	}{
		{"literal", "unknown key " + redactKey},
		{"twice", redactKey + " and " + redactKey},
		{"secret part only", "key=" + secret},
		{"a fragment", `malformed HTTP status code "` + secret[3:14] + `"`},
		{"cut at the end", "header: " + redactKey[:20]},
		{"Go %q", fmt.Sprintf("malformed HTTP response %q", "HTTP/1.1 200 "+redactKey)},
		{"JSON string", `{"detail":` + string(jsonKey) + `}`},
		{"first byte \\u-escaped", `\u0071s_test_SECRETsecret0123456789`},
		{"every byte \\u-escaped", jsonUnicodeEscape(redactKey)},
		{"upper-case hex", strings.ReplaceAll(strings.ToUpper(jsonUnicodeEscape(redactKey)), `\U`, `\u`)},
		{"percent-encoded", "%71%73%5F%74%65%73%74%5F%53%45%43%52%45%54secret0123456789"},
		{"HTML-escaped quote in the key", "qs_test_SECRET&#34;secret0123456789"},
		{"escaped twice", strings.ReplaceAll(jsonUnicodeEscape(redactKey), `\`, `\\`)},
		{"escaped three times", strconv.Quote(strconv.Quote(jsonUnicodeEscape(redactKey)))},
		{"mixed", `q\u0073_te%73t_SECRET\u0073ecret0123456789`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out := r.redact(tt.in)
			assert.NotEqual(t, tt.in, out)
			assert.Contains(t, out, redacted)
			for _, layer := range decodeLayers(out) {
				assert.NotContains(t, layer, secret[:8], "key material survived in %q", out)
				assert.NotContains(t, layer, secret[8:16], "key material survived in %q", out)
			}
		})
	}
}

// decodeLayers returns s and up to four layers of unescaping of it.
func decodeLayers(s string) []string {
	layers := []string{s}
	for range 4 {
		d, _ := unescape(s)
		layers = append(layers, d)
		s = d
	}
	return layers
}

func TestRedactorKeepsOtherText(t *testing.T) {
	t.Parallel()
	r := newRedactor(redactKey)
	for _, s := range []string{
		"", "nothing here", "qs_test_ is a test key prefix", "50% off &amp; more \\n", "019d6258-07ba-7418-83be-58f5fde53e4e",
		`{"detail":"quota exceeded"}`, strings.Repeat("SECRET ", 20),
	} {
		assert.Equal(t, s, r.redact(s))
	}
	assert.Equal(t, "key [REDACTED] and [REDACTED]", r.redact("key "+redactKey+" and "+redactKey))
	assert.Equal(t, `"[REDACTED]"`, r.redact(strconv.Quote(redactKey)))
	assert.Nil(t, newRedactor(""))
	assert.Equal(t, "x", (*redactor)(nil).redact("x"))
}

func TestRedactorShortKey(t *testing.T) {
	t.Parallel()
	r := newRedactor("abc")
	assert.Equal(t, "x [REDACTED] y", r.redact("x abc y"))
	assert.Equal(t, "x [REDACTED] y", r.redact(`x \u0061bc y`))
	assert.Equal(t, "ab", r.redact("ab"))
}

func TestRedactLiteralAllocatesNothingWithoutKey(t *testing.T) {
	r := newRedactor(redactKey)
	id := "019d6258-07ba-7418-83be-58f5fde53e4e"
	allocs := testing.AllocsPerRun(100, func() { _ = r.redact(id) })
	assert.Zero(t, allocs)
}

func TestSanitize(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"plain text":                    "plain text",
		"line\nforged INFO ok":          `line\nforged INFO ok`,
		"esc \x1b[31mred":               `esc \x1b[31mred`,
		"cr\rtab\tnul\x00del\x7f":       `cr\rtab\tnul\x00del\x7f`,
		"bidi \u202eevil\u202c":         `bidi \u202eevil\u202c`,
		"isolate \u2066x\u2069":         `isolate \u2066x\u2069`,
		"sep \u2028 \u2029":             `sep \u2028 \u2029`,
		"c1 \u0085 \u009b":              `c1 \x85 \x9b`,
		"zero width \u200b\u200d\ufeff": `zero width \u200b\u200d\ufeff`,
		"ünïcödé 日本 🙂":                  "ünïcödé 日本 🙂",
		"bad utf-8 \xff":                "bad utf-8 \uFFFD",
	}
	for in, want := range tests {
		assert.Equal(t, want, sanitize(in), "sanitize(%q)", in)
	}
}
