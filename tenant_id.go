package quotastack

import (
	"crypto/sha256"
	"encoding/hex"
)

// Tenant returns an opaque, stable name of the client's tenant environment:
// a hash of its API key and base URL (the key can't be read back from it).
// Two clients with the same key and base URL return the same name. Stores
// that must keep tenants apart (the autobuy package's in-process defaults)
// key on it.
func (c *Client) Tenant() string {
	h := sha256.Sum256([]byte("quotastack-tenant\x00" + c.base.String() + "\x00" + c.apiKey))
	return hex.EncodeToString(h[:12])
}
