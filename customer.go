package quotastack

import (
	"encoding/json"
	"strings"
	"unicode/utf8"
)

// Customer identifies a customer by exactly one of its two ids: a QuotaStack
// id (CustomerID) or the tenant's own id (ExternalID). The zero value is
// invalid and is refused before any request.
type Customer struct {
	id       string
	external bool
}

// CustomerID refers to a customer by its QuotaStack id (a UUID such as
// "019d6258-07ba-7418-83be-58f5fde53e4e"); it is sent under /v1/customers/.
func CustomerID(id string) Customer { return Customer{id: id} }

// ExternalID refers to a customer by the tenant's own id, stored verbatim
// (e.g. "user42:companion7"); it is path-escaped under /v1/customer-by-external-id/.
func ExternalID(id string) Customer { return Customer{id: id, external: true} }

// ID returns the id as given.
func (c Customer) ID() string { return c.id }

// IsExternal reports whether c was made with ExternalID.
func (c Customer) IsExternal() bool { return c.external }

// IsZero reports whether c names no customer.
func (c Customer) IsZero() bool { return c.id == "" }

// String returns "external:<id>" or "customer:<id>", for logs and lock keys.
func (c Customer) String() string {
	if c.external {
		return "external:" + c.id
	}
	return "customer:" + c.id
}

func (c Customer) validate() error {
	switch {
	case c.id == "":
		return inputErr("customer", "empty customer id (use quotastack.ExternalID or quotastack.CustomerID)")
	case !utf8.ValidString(c.id):
		return inputErr("customer", "customer id is not valid UTF-8")
	case len(c.id) > 512:
		return inputErr("customer", "customer id is longer than 512 bytes")
	}
	return nil
}

// path returns the customer-scoped path prefix, with the id escaped as one
// path segment.
func (c Customer) path() string {
	if c.external {
		return "/v1/customer-by-external-id/" + escapeSegment(c.id)
	}
	return "/v1/customers/" + escapeSegment(c.id)
}

// customerFields is embedded in request bodies: exactly one field is set.
type customerFields struct {
	CustomerID         string `json:"customer_id,omitempty"`
	ExternalCustomerID string `json:"external_customer_id,omitempty"`
}

func (c Customer) fields() customerFields {
	if c.external {
		return customerFields{ExternalCustomerID: c.id}
	}
	return customerFields{CustomerID: c.id}
}

// MarshalJSON writes the customer as the body fields it stands for.
func (c Customer) MarshalJSON() ([]byte, error) { return json.Marshal(c.fields()) }

// escapeSegment percent-encodes every byte except RFC 3986 unreserved
// characters, so ':', '/', '%', spaces and unicode all survive as one segment
// (url.PathEscape would leave ':' and '@' as they are).
func escapeSegment(s string) string {
	const hex = "0123456789ABCDEF"
	if s != "." && s != ".." && !needsEscape(s) {
		return s
	}
	if s == "." || s == ".." {
		// Dot segments would be removed by path normalisation on the way.
		return strings.Repeat("%2E", len(s))
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if unreserved(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

func needsEscape(s string) bool {
	for i := 0; i < len(s); i++ {
		if !unreserved(s[i]) {
			return true
		}
	}
	return false
}

// unreserved reports whether c is an RFC 3986 unreserved character.
func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}
