package quotastack

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// redacted replaces API key material in text the SDK passes on.
const redacted = "[REDACTED]"

// fragmentLen is the length of the shortest piece of the key that is
// redacted on its own: a server that echoes part of the key (a cut line, a
// quoted field) must not leak that part either.
const fragmentLen = 8

// maxUnescapeDepth bounds how many layers of escaping (a JSON string of a
// %q-quoted line, ...) are undone when looking for the key.
const maxUnescapeDepth = 3

// redactor removes the API key from foreign text: server-provided strings,
// net/http error text quoting the bytes a server sent, decoded JSON values.
// It finds the key, and any run of at least fragmentLen of its bytes, written
// literally or escaped per character the ways a server echoes a header value:
// JSON (\uXXXX, \" \\ \/), Go's %q (\" \\) and URL encoding (%HH). A key
// is printable ASCII, so Go's \x and \U escapes never write it, and an HTML
// page escapes only its few special characters, leaving runs the literal
// match catches. Pieces it can locate are replaced by [REDACTED]; key
// material it can only see under several layers of escaping makes it drop
// the whole text.
// Built once per client; safe for concurrent use (read-only after build).
type redactor struct {
	n     int    // bytes per fragment: min(fragmentLen, len(key))
	mask  uint64 // the low n*8 bits
	key   string
	grams map[uint64]int // every n-byte window of the key (packed big-endian) and its offset in the key
	bloom [64]uint64     // 4096-bit prefilter over grams
}

// newRedactor returns the redactor of key; nil for an empty key (nothing to hide).
func newRedactor(key string) *redactor {
	if key == "" {
		return nil
	}
	r := &redactor{key: key, n: min(fragmentLen, len(key)), grams: map[uint64]int{}}
	r.mask = ^uint64(0)
	if r.n < 8 {
		r.mask = 1<<(8*uint(r.n)) - 1
	}
	// The documented prefixes are public: a text that only names the
	// environment ("qs_test_") is not a leak.
	public := 0
	if strings.HasPrefix(key, "qs_live_") || strings.HasPrefix(key, "qs_test_") {
		public = len("qs_live_")
	}
	for i := 0; i+r.n <= len(key); i++ {
		if i+r.n <= public && len(key) > public {
			continue
		}
		g := pack(key[i : i+r.n])
		if _, dup := r.grams[g]; !dup {
			r.grams[g] = i
		}
		h := bloomHash(g)
		r.bloom[h>>6] |= 1 << (h & 63)
	}
	return r
}

func pack(s string) uint64 {
	var v uint64
	for i := 0; i < len(s); i++ {
		v = v<<8 | uint64(s[i])
	}
	return v
}

func bloomHash(g uint64) uint64 { return (g * 0x9E3779B97F4A7C15) >> 52 }

// isGram reports whether the window g is a piece of the key.
func (r *redactor) isGram(g uint64) bool {
	h := bloomHash(g)
	if r.bloom[h>>6]&(1<<(h&63)) == 0 {
		return false
	}
	_, ok := r.grams[g]
	return ok
}

// mark flags the units of dec that are key material: every window that is
// a piece of the key, extended backwards over the key's public prefix (which
// alone is no secret, but is part of the key when the rest follows).
func (r *redactor) mark(dec string) []bool {
	hit := make([]bool, len(dec))
	var v uint64
	for i := 0; i < len(dec); i++ {
		v = (v<<8 | uint64(dec[i])) & r.mask
		if i+1 < r.n || !r.isGram(v) {
			continue
		}
		start := i + 1 - r.n
		for j := start; j <= i; j++ {
			hit[j] = true
		}
		for k, p := r.grams[v]-1, start-1; k >= 0 && p >= 0 && dec[p] == r.key[k]; k, p = k-1, p-1 {
			hit[p] = true
		}
	}
	return hit
}

// redact returns s without key material. Text that holds none is returned
// as is, without allocating.
func (r *redactor) redact(s string) string {
	if r == nil || len(s) < r.n {
		return s
	}
	out := s
	if hasEscapes(s) {
		out = r.redactEscaped(s)
	} else if r.hasGram(s) {
		out = r.redactLiteral(s)
	}
	// Key material behind several layers of escaping can't be located
	// reliably in the original text: drop the text.
	if hasEscapes(out) {
		layer := out
		for range maxUnescapeDepth {
			dec, _ := unescape(layer)
			if dec == layer {
				break
			}
			if r.hasGram(dec) {
				return redacted
			}
			layer = dec
		}
	}
	return out
}

func hasEscapes(s string) bool { return strings.ContainsAny(s, `\%`) }

// hasGram reports whether s holds a piece of the key, literally.
func (r *redactor) hasGram(s string) bool {
	if len(s) < r.n {
		return false
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		v = (v<<8 | uint64(s[i])) & r.mask
		if i+1 >= r.n && r.isGram(v) {
			return true
		}
	}
	return false
}

// redactLiteral replaces every run of s made of key pieces.
func (r *redactor) redactLiteral(s string) string { return replaceRuns(s, r.mark(s), nil) }

// redactEscaped decodes one layer of escapes, finds key pieces in the decoded
// bytes and replaces the raw text they came from.
func (r *redactor) redactEscaped(s string) string {
	dec, starts := unescape(s)
	if !r.hasGram(dec) {
		return s
	}
	return replaceRuns(s, r.mark(dec), starts)
}

// replaceRuns replaces each run of hit units of s with [REDACTED]. Unit i
// spans s[starts[i]:starts[i+1]] (starts has one entry more than hit); a nil
// starts means one byte per unit.
func replaceRuns(s string, hit []bool, starts []int) string {
	at := func(i int) int {
		if starts == nil {
			return i
		}
		return starts[i]
	}
	var b strings.Builder
	b.Grow(len(s))
	last := 0
	for i := 0; i < len(hit); {
		if !hit[i] {
			i++
			continue
		}
		j := i
		for j < len(hit) && hit[j] {
			j++
		}
		b.WriteString(s[last:at(i)])
		b.WriteString(redacted)
		last = at(j)
		i = j
	}
	b.WriteString(s[last:])
	return b.String()
}

// unescape decodes one layer of the escapes a key may arrive in: \uXXXX, a
// backslash before any other byte, and %HH. A non-ASCII character decodes to
// 0 (it is never part of a key). starts[i] is the offset in s of the text
// decoded byte i came from, with a final entry len(s).
func unescape(s string) (string, []int) {
	dec := make([]byte, 0, len(s))
	starts := make([]int, 0, len(s)+1)
	for i := 0; i < len(s); {
		c, n := s[i], 1
		switch {
		case c == '\\' && i+1 < len(s):
			c, n = s[i+1], 2
			if v, ok := hexAt(s, i+2, 4); ok && c == 'u' {
				c, n = asciiOr0(v), 6
			}
		case c == '%':
			if v, ok := hexAt(s, i+1, 2); ok {
				c, n = byte(v), 3 //nolint:gosec // two hex digits: at most 0xff
			}
		}
		starts = append(starts, i)
		dec = append(dec, c)
		i += n
	}
	starts = append(starts, len(s))
	return string(dec), starts
}

func asciiOr0(v uint64) byte {
	if v < utf8.RuneSelf {
		return byte(v)
	}
	return 0
}

func hexAt(s string, at, n int) (uint64, bool) {
	if at+n > len(s) {
		return 0, false
	}
	var v uint64
	for i := at; i < at+n; i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint64(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		case c >= 'A' && c <= 'F':
			v = v<<4 | uint64(c-'A'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// sanitize makes server-provided text safe to put in a log line or an error
// string: control characters (C0, DEL, C1), line and paragraph separators
// and format characters (bidi overrides, zero-width marks) are written as Go
// escapes (\n, \x1b, \u202e), and invalid UTF-8 as U+FFFD.
func sanitize(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b.WriteRune(utf8.RuneError)
		case unsafeRune(r):
			b.WriteString(escapeRune(r))
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func unsafeRune(r rune) bool {
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029' ||
		unicode.Is(unicode.Cf, r) || unicode.Is(unicode.Co, r) || unicode.Is(unicode.Cs, r)
}

// escapeRune writes r as a Go escape: \n, \x1b or \u202e.
func escapeRune(r rune) string {
	switch r {
	case '\n':
		return `\n`
	case '\r':
		return `\r`
	case '\t':
		return `\t`
	}
	const hexDigits = "0123456789abcdef"
	if r < 0x100 {
		return `\x` + string([]byte{hexDigits[r>>4], hexDigits[r&15]})
	}
	buf := []byte(`\u`)
	if r > 0xffff {
		buf = []byte(`\U`)
		for s := 28; s >= 0; s -= 4 {
			buf = append(buf, hexDigits[(r>>uint(s))&15])
		}
		return string(buf)
	}
	for s := 12; s >= 0; s -= 4 {
		buf = append(buf, hexDigits[(r>>uint(s))&15])
	}
	return string(buf)
}

// text is the form in which foreign text enters an SDK string: key removed,
// control characters escaped, capped.
func (r *redactor) text(s string) string { return trim(sanitize(r.redact(s))) }
