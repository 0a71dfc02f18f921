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
	require.NoError(t, run(context.Background(), &out, func(string) string { return "" }, false))
	for _, want := range []string{
		"Using the embedded fake QuotaStack",
		"bob: used up the plan credits (50 messages).",
		"alice m1 (has plan credits):\n  200 OK {\"reply\":\"Hi! How can I help?\",\"reason\":\"entitled\"}\n",
		"alice m2 (the model fails: the hold is released):\n  502 Bad Gateway the model is unavailable\n",
		"alice: balance 199,000 mc, reserved 0 mc, effective 199,000 mc, lifetime earned 300,000 mc, wallet 150,000 mc, plan credits 49,000 mc",
		"bob m1 (used up his plan, wallet full):\n  200 OK {\"reply\":\"Hi! How can I help?\",\"reason\":\"auto_bought\",\"auto_bought_plan\":\"1hr\"}\n",
		"carol m1 (has an empty wallet):\n  402 Payment Required {\"allowed\":false,\"reason\":\"empty_wallet\",\"show\":\"paywall\"}\n",
		"dave m1 (turned auto-buy off):\n  402 Payment Required {\"allowed\":false,\"reason\":\"plan_expired\",\"show\":\"plan_picker\"}\n",
		"bob: balance 99,000 mc, reserved 0 mc, effective 99,000 mc, lifetime earned 350,000 mc, wallet 50,000 mc, plan credits 49,000 mc",
		"trigger=auto_buy",
	} {
		assert.Contains(t, out.String(), want)
	}
}
