package quotastacktest

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Webhook is one delivery the fake made with DeliverWebhook.
type Webhook struct {
	ID, Type string
	Body     []byte // the raw JSON envelope that was signed
	Status   int    // the receiver's answer
}

// DeliverWebhook POSTs a webhook event to url as QuotaStack does: the
// envelope {"id","type","created_at","data"} signed per Standard Webhooks
// (headers webhook-id, webhook-timestamp and webhook-signature "v1,<base64
// HMAC-SHA256 of id.timestamp.body>", keyed by the base64-decoded secret, a
// "whsec_" prefix allowed). The timestamp is the server clock's now. It
// returns the delivery, with the receiver's status; an error means it could
// not be delivered.
func (s *Server) DeliverWebhook(ctx context.Context, url, secret, eventType string, data any) (Webhook, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil || len(key) == 0 {
		return Webhook{}, fmt.Errorf("quotastacktest: webhook secret must be base64")
	}
	raw := make([]byte, 12)
	_, _ = rand.Read(raw)
	now := s.Now()
	env := struct {
		ID        string    `json:"id"`
		Type      string    `json:"type"`
		CreatedAt time.Time `json:"created_at"`
		Data      any       `json:"data"`
	}{"msg_" + hex.EncodeToString(raw), eventType, now, data}
	body, err := json.Marshal(env)
	if err != nil {
		return Webhook{}, fmt.Errorf("quotastacktest: webhook data: %w", err)
	}
	ts := strconv.FormatInt(now.Unix(), 10)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(env.ID + "." + ts + "."))
	mac.Write(body)

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return Webhook{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("webhook-id", env.ID)
	req.Header.Set("webhook-timestamp", ts)
	req.Header.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Webhook{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return Webhook{ID: env.ID, Type: eventType, Body: body, Status: resp.StatusCode}, nil
}
