package quotastack_test

import (
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

// The nested modules require the core at the version it says it is.
func TestVersionIsWhatTheNestedModulesRequire(t *testing.T) {
	t.Parallel()
	req := regexp.MustCompile(`(?m)^\tgithub\.com/quotastack/quotastack-go (v\S+)$`)
	for _, mod := range []string{"autobuy/redislock/go.mod", "otelquotastack/go.mod"} {
		b, err := os.ReadFile(mod)
		require.NoError(t, err)
		m := req.FindSubmatch(b)
		require.NotNil(t, m, "%s requires no quotastack-go version", mod)
		assert.Equal(t, "v"+quotastack.Version, string(m[1]), mod)
	}
}
