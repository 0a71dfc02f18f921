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
		"Metric image_generation costs 2,000 mc per image, paid from any block.",
		"balance before: 50,000 mc, reserved 0 mc, effective 50,000 mc",
		"Reserved 20,000 mc for 10 images (rsv_",
		"balance while generating: 50,000 mc, reserved 20,000 mc, effective 30,000 mc",
		"committed with 7 units: 14,000 mc debited, the other 6,000 mc of the hold returned.",
		"balance after the commit: 36,000 mc, reserved 0 mc, effective 36,000 mc",
		"balance while generating: 36,000 mc, reserved 20,000 mc, effective 16,000 mc",
		`RunReserved returned the action's error ("the image model timed out") and released reservation rsv_`,
		"balance after the release: 36,000 mc, reserved 0 mc, effective 36,000 mc",
		"Debited by the failed generation: 0 mc.",
		"ivy: balance 36,000 mc, reserved 0 mc, effective 36,000 mc, lifetime earned 50,000 mc",
	} {
		assert.Contains(t, out.String(), want)
	}
}
