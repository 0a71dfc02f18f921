// Package idem makes and checks idempotency keys.
package idem

import (
	"crypto/rand"
	"errors"
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
