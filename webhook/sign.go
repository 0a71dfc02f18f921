package webhook

import (
	"errors"
	"net/http"
	"strconv"
	"time"
)

// Sign returns the "v1,<base64>" webhook-signature value for a delivery of body with the
// given id and timestamp, as QuotaStack would send it. It is meant for tests.
func Sign(secret, id string, ts time.Time, body []byte) (string, error) {
	key, err := decodeSecret(secret)
	if err != nil {
		return "", err
	}
	if id == "" {
		return "", errors.New("webhook: Sign needs a non-empty id")
	}
	if ts.Unix() < 0 {
		return "", errors.New("webhook: Sign needs a timestamp after 1970")
	}
	return signature(key, id, strconv.FormatInt(ts.Unix(), 10), body), nil
}

// SignedHeaders returns the webhook-id, webhook-timestamp and webhook-signature headers of
// a delivery of body, ready for an http.Request in tests.
func SignedHeaders(secret, id string, ts time.Time, body []byte) (http.Header, error) {
	sig, err := Sign(secret, id, ts, body)
	if err != nil {
		return nil, err
	}
	h := make(http.Header, 3)
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, sig)
	return h, nil
}
