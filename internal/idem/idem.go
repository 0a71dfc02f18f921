// Package idem makes and checks idempotency keys.
package idem

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
)

// MaxKeyLen is the longest Idempotency-Key the client sends.
const MaxKeyLen = 255

// New returns a random key with at least 128 bits of entropy.
func New() string {
	return "qsk_" + rand.Text()
}

// Check reports why key is not a usable Idempotency-Key header value, or nil.
func Check(key string) error {
	switch {
	case key == "":
		return errors.New("idempotency key is empty")
	case len(key) > MaxKeyLen:
		return errors.New("idempotency key is longer than 255 bytes")
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x21 || c > 0x7e {
			return errors.New("idempotency key must be printable ASCII without spaces")
		}
	}
	return nil
}

// Join builds a deterministic, injective idempotency key from prefix and
// parts: "prefix:part1:part2...", where each part is escaped so that it
// holds no ':' ('%' becomes "%25", ':' "%3A", and every byte outside
// printable ASCII "%XX"). Different part lists therefore never give the same
// key. A key that would pass MaxKeyLen becomes "prefix:%h" + the SHA-256 of
// the length-prefixed parts, a form no escaped part can take.
func Join(prefix string, parts ...string) string {
	n := len(prefix)
	for _, p := range parts {
		n += 1 + len(p)
	}
	var b strings.Builder
	b.Grow(n + 8)
	b.WriteString(prefix)
	for _, p := range parts {
		b.WriteByte(':')
		for i := 0; i < len(p); i++ {
			c := p[i]
			if c <= ' ' || c > '~' || c == ':' || c == '%' {
				b.WriteByte('%')
				b.WriteByte(hexDigits[c>>4])
				b.WriteByte(hexDigits[c&15])
				continue
			}
			b.WriteByte(c)
		}
		if b.Len() > MaxKeyLen {
			break
		}
	}
	if b.Len() <= MaxKeyLen {
		return b.String()
	}
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(strconv.Itoa(len(p))))
		h.Write([]byte{':'})
		h.Write([]byte(p))
	}
	return prefix + ":%h" + hex.EncodeToString(h.Sum(nil))
}

const hexDigits = "0123456789ABCDEF"
