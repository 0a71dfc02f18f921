package main

import (
	"bytes"
	"context"
	"io"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

func noEnv(string) string { return "" }

func TestStory(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out, noEnv, false))
	for _, want := range []string{
		"Using the embedded fake QuotaStack",
		"messages 1-50: allowed (entitled)",
		"message 51: allowed (auto_bought)",
		"messages 52-100: allowed (entitled)",
		"messages 101-110: denied (empty_wallet): show the PAYWALL",
		"message 1: denied (plan_expired): show the PLAN PICKER",
		"(plan_expired: no live plan credits, whether a plan ran out or was never bought, and auto-buy is off.)",
		"Hooks fired: auto-bought 1, paywall or plan picker 11.",
		"effective: balance minus reserved",
		"lifetime earned: every credit ever granted",
		"priority 0 with no expiry is the wallet, priority 10 with an expiry is a plan's credits",
		"user42:companion7: balance 50,000 mc",
		`debit key "plan-debit:1hr:ord_`,
		"trigger auto_buy",
	} {
		assert.Contains(t, out.String(), want)
	}
	// The definitions come before the first ledger line that uses the words.
	firstUse := regexp.MustCompile(`lifetime earned [0-9]`).FindIndex(out.Bytes())
	require.NotNil(t, firstUse)
	assert.Less(t, bytes.Index(out.Bytes(), []byte("lifetime earned: every")), firstUse[0])
}

// TestKeepsATenantsRule runs the example against a "real" server (a fake
// reached through QUOTASTACK_API_KEY) whose chat_message rule differs: the
// rule stays unless -replace-rules is given.
func TestKeepsATenantsRule(t *testing.T) {
	t.Parallel()
	srv := quotastacktest.Start(t)
	_, err := srv.CreateRule(quotastack.Rule{BillableMetricKey: "chat_message", CostType: "per_unit", UnitCost: 5})
	require.NoError(t, err)
	vars := map[string]string{"QUOTASTACK_API_KEY": srv.APIKey, "QUOTASTACK_BASE_URL": srv.URL}
	getenv := func(k string) string { return vars[k] }

	err = run(context.Background(), io.Discard, getenv, false)
	require.ErrorIs(t, err, autobuy.ErrRuleDiffers)
	assert.Contains(t, err.Error(), "-replace-rules")
	for _, r := range srv.Requests() {
		assert.NotEqual(t, "POST", r.Method, "nothing written: %s", r.Path)
	}
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out, getenv, true))
	assert.Contains(t, out.String(), "Using QuotaStack at "+srv.URL)
	assert.Contains(t, out.String(), "message 51: allowed (auto_bought)")
}
