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
		"Plan A (immediate): 50,000 mc of plan credits, expires",
		"Plan B (queued):    50,000 mc of plan credits, expires",
		"1h0m0s after plan A.",
		"Plans never merge: A and B are two blocks",
		"Messages 1-30 sent (30,000 mc).\n  plan A: 20,000 mc left\n  plan B: 50,000 mc left\n",
		"Messages 31-60 sent (30,000 mc).\n  plan A: used up (spent blocks are no longer listed)\n  plan B: 40,000 mc left\n",
		"sam: balance 140,000 mc, reserved 0 mc, effective 140,000 mc, lifetime earned 400,000 mc, wallet 100,000 mc, plan credits 40,000 mc",
	} {
		assert.Contains(t, out.String(), want)
	}
}
