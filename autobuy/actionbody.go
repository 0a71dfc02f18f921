package autobuy

import (
	"bytes"
	"io"
	"net/http"
)

// readAction runs the ActionFunc with r.Body wrapped so that what it reads is
// kept, then gives the handler a body that starts with those bytes and goes
// on with the unread rest: the handler sees the whole body either way.
func readAction(action ActionFunc, r *http.Request) (Action, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return action(r)
	}
	orig := r.Body
	rec := &recordingBody{r: orig}
	r.Body = rec
	a, err := action(r)
	if rec.buf.Len() == 0 && !rec.closed {
		r.Body = orig // nothing read: the body as it came
		return a, err
	}
	r.Body = &replayedBody{Reader: io.MultiReader(&rec.buf, orig), c: orig}
	return a, err
}

// recordingBody keeps what the ActionFunc reads; its Close leaves the
// request's body open for the handler.
type recordingBody struct {
	r      io.Reader
	buf    bytes.Buffer
	closed bool
}

func (b *recordingBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.r.Read(p)
	b.buf.Write(p[:n])
	return n, err
}

func (b *recordingBody) Close() error { b.closed = true; return nil }

// replayedBody is the handler's body: what the ActionFunc read, then the rest.
type replayedBody struct {
	io.Reader
	c io.Closer
}

func (b *replayedBody) Close() error { return b.c.Close() }
