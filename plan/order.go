package plan

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"time"
)

// NewOrderID returns a fresh order id ("ord_" + time + 128 random bits) that
// never collides with another. Store it before calling Buy if you want to be
// able to finish the purchase after a crash.
//
// Use NewOrderID when the purchase itself is the business event (a user
// clicking "buy"). When the purchase follows from an event that can be
// delivered twice (a payment webhook, a message that triggers an auto-buy,
// a job that may be retried), derive the id from that event with
// DeriveOrderID instead, so a redelivery reuses the id and can't buy twice.
func NewOrderID() string {
	return "ord_" + strconv.FormatInt(time.Now().UnixMilli(), 36) + "_" + strings.ToLower(rand.Text())
}

// DeriveOrderID returns a deterministic order id for the business ids parts
// (e.g. a checkout or payment id): the same parts always give the same id,
// different parts practically never do.
func DeriveOrderID(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		// Length-prefix each part so ("ab","c") and ("a","bc") differ.
		h.Write([]byte(strconv.Itoa(len(p))))
		h.Write([]byte{':'})
		h.Write([]byte(p))
	}
	return "ord_" + hex.EncodeToString(h.Sum(nil)[:16])
}
