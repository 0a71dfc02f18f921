package autobuy

import (
	"bytes"
	"io"
	"net/http"
)

// readAction runs the ActionFunc with r.Body wrapped so that what it reads is
// kept, then gives the handler a body that starts with those bytes and goes
// on with the unread rest: the handler sees the whole body either way. A body
// the ActionFunc put in place of r.Body (say an http.MaxBytesReader around
// it) is kept for the rest.
func readAction(action ActionFunc, r *http.Request) (Action, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return action(r)
	}
	orig := r.Body
	rec := &recordingBody{rc: orig}
	r.Body = rec
	a, err := action(r)
	rec.passThrough = true
	rest := r.Body
	if rest == nil {
		rest = rec
	}
	if rec.buf.Len() == 0 {
		if rest == rec {
			r.Body = orig // nothing read: the body as it came
		}
		return a, err
	}
	r.Body = &replayedBody{Reader: io.MultiReader(bytes.NewReader(rec.buf.Bytes()), rest), c: rest}
	return a, err
}

// recordingBody keeps what the ActionFunc reads, and its Close leaves the
// request's body open for the handler; once the ActionFunc has returned it
// only passes reads and Close through.
type recordingBody struct {
	rc          io.ReadCloser
	buf         bytes.Buffer
	closed      bool // closed by the ActionFunc
	passThrough bool // the ActionFunc has returned
}

func (b *recordingBody) Read(p []byte) (int, error) {
	if b.passThrough {
		return b.rc.Read(p)
	}
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.rc.Read(p)
	b.buf.Write(p[:n])
	return n, err
}

func (b *recordingBody) Close() error {
	if b.passThrough {
		return b.rc.Close()
	}
	b.closed = true
	return nil
}

// replayedBody is the handler's body: what the ActionFunc read, then the rest.
type replayedBody struct {
	io.Reader
	c io.Closer
}

func (b *replayedBody) Close() error { return b.c.Close() }
