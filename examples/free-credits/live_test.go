package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRefusesALiveKey: with a live key the example stops before sending
// anything, whatever server it is pointed at.
func TestRefusesALiveKey(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	vars := map[string]string{"QUOTASTACK_API_KEY": "qs_live_0123456789", "QUOTASTACK_BASE_URL": srv.URL}
	err := run(context.Background(), io.Discard, func(k string) string { return vars[k] })
	require.ErrorContains(t, err, "refusing to run an example with a live key")
	assert.NotContains(t, err.Error(), "0123456789")
	assert.Zero(t, hits.Load(), "no request may be sent")
}
