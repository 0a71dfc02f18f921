package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStory(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out, func(string) string { return "" }))
	for _, want := range []string{
		"Using the embedded fake QuotaStack",
		"messages 1-50: allowed (entitled)",
		"message 51: allowed (auto_bought)",
		"messages 52-100: allowed (entitled)",
		"messages 101-110: denied (empty_wallet): show the PAYWALL",
		"message 1: denied (plan_expired): show the PLAN PICKER",
		"Hooks fired: auto-bought 1, paywall or plan picker 11.",
		"user42:companion7: balance 50,000 mc",
		`debit key "plan-debit:1hr:ord_`,
		"trigger auto_buy",
	} {
		assert.Contains(t, out.String(), want)
	}
}
