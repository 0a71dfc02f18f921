package reliability_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawRequest is what a raw server read of one request: enough for a script
// to echo the key or route by path.
type rawRequest struct {
	Method, Path string
	Key          string // the X-API-Key header
	N            int64  // 1 for the first request this server read, 2 for the next, ...
}

// rawScript writes whatever bytes it wants on conn in answer to req. It
// returns when done; the server then closes conn (unless the script keeps it
// half-open by returning only when stop closes). Write errors are the
// client hanging up: scripts ignore them and return.
type rawScript func(conn net.Conn, req rawRequest, stop <-chan struct{})

// rawServer is a TCP listener on loopback that answers each request with a
// script: it writes arbitrary bytes, not HTTP a handler could produce.
type rawServer struct {
	ln    net.Listener
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	reqs  atomic.Int64
}

// startRawServer serves script on 127.0.0.1 until the test ends; Close (run
// by t.Cleanup) closes every connection and waits for every goroutine.
func startRawServer(t testing.TB, script rawScript) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := &rawServer{ln: ln, stop: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept(script)
	t.Cleanup(s.Close)
	return s
}

// URL is the base URL of the server.
func (s *rawServer) URL() string { return "http://" + s.ln.Addr().String() }

// Requests is how many requests the server read.
func (s *rawServer) Requests() int64 { return s.reqs.Load() }

func (s *rawServer) accept(script rawScript) {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		select {
		case <-s.stop:
			s.mu.Unlock()
			_ = conn.Close()
			return
		default:
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(conn, script)
	}
}

func (s *rawServer) serve(conn net.Conn, script rawScript) {
	defer s.wg.Done()
	defer func() {
		_ = conn.Close()
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
	}()
	// One request per connection: every script decides how its answer ends,
	// so the connection is not reused.
	req, ok := readRawRequest(bufio.NewReader(conn))
	if !ok {
		return
	}
	req.N = s.reqs.Add(1)
	script(conn, req, s.stop)
}

// readRawRequest reads a request head and its Content-Length body.
func readRawRequest(br *bufio.Reader) (rawRequest, bool) {
	line, err := br.ReadString('\n')
	if err != nil {
		return rawRequest{}, false
	}
	fields := strings.Fields(line)
	if len(fields) < 2 {
		return rawRequest{}, false
	}
	req := rawRequest{Method: fields[0], Path: fields[1]}
	length := 0
	for {
		h, err := br.ReadString('\n')
		if err != nil {
			return rawRequest{}, false
		}
		h = strings.TrimRight(h, "\r\n")
		if h == "" {
			break
		}
		name, value, _ := strings.Cut(h, ":")
		value = strings.TrimSpace(value)
		switch strings.ToLower(name) {
		case "x-api-key":
			req.Key = value
		case "content-length":
			length, _ = strconv.Atoi(value)
		}
	}
	if _, err := io.CopyN(io.Discard, br, int64(length)); err != nil {
		return rawRequest{}, false
	}
	return req, true
}

// Close stops the server: the listener and every open connection are
// closed, and it waits for the scripts to return.
func (s *rawServer) Close() {
	s.mu.Lock()
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	_ = s.ln.Close()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Script building blocks.

// writeAll writes each piece; false once the client has gone.
func writeAll(conn net.Conn, pieces ...string) bool {
	for _, p := range pieces {
		if _, err := io.WriteString(conn, p); err != nil {
			return false
		}
	}
	return true
}

// answer writes b and returns: the server then closes the connection.
func answer(b string) rawScript {
	return func(conn net.Conn, _ rawRequest, _ <-chan struct{}) { writeAll(conn, b) }
}

// answerWithKey writes the bytes f builds from the key the request carried.
func answerWithKey(f func(key string) string) rawScript {
	return func(conn net.Conn, req rawRequest, _ <-chan struct{}) { writeAll(conn, f(req.Key)) }
}

// holdOpen waits until the client closes the connection or the server stops,
// without writing: silence.
func holdOpen(conn net.Conn, stop <-chan struct{}) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(io.Discard, conn) // ends when the client closes (or Close closes conn)
	}()
	select {
	case <-done:
	case <-stop:
		_ = conn.Close()
		<-done
	}
}

// thenSilence writes b and then holds the connection open in silence.
func thenSilence(f func(key string) string) rawScript {
	return func(conn net.Conn, req rawRequest, stop <-chan struct{}) {
		if writeAll(conn, f(req.Key)) {
			holdOpen(conn, stop)
		}
	}
}

// trickle writes head, then one byte of drip every interval, looping over
// drip, until the client goes or the server stops.
func trickle(head, drip string, interval time.Duration) rawScript {
	return func(conn net.Conn, _ rawRequest, stop <-chan struct{}) {
		if !writeAll(conn, head) {
			return
		}
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if !writeAll(conn, drip[i%len(drip):i%len(drip)+1]) {
				return
			}
		}
	}
}

// resetAfter writes b and then resets the connection (RST, not FIN).
func resetAfter(b string) rawScript {
	return func(conn net.Conn, _ rawRequest, _ <-chan struct{}) {
		writeAll(conn, b)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
	}
}

// halfClose writes b, then closes the server's sending side only and keeps
// reading until the client goes.
func halfClose(b string) rawScript {
	return func(conn net.Conn, _ rawRequest, stop <-chan struct{}) {
		writeAll(conn, b)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		holdOpen(conn, stop)
	}
}

// firstThen answers the server's first request with first and every later
// one with rest: a gate's check gets a well-formed "not entitled", and its
// purchase meets the hostile bytes.
func firstThen(first string, rest rawScript) rawScript {
	return func(conn net.Conn, req rawRequest, stop <-chan struct{}) {
		if req.N == 1 {
			writeAll(conn, first)
			return
		}
		rest(conn, req, stop)
	}
}

// httpResponse formats a well-formed response with a JSON body.
func httpResponse(status int, headers, body string) string {
	return fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n%s",
		status, http.StatusText(status), len(body), headers, body)
}

// gzipBomb is a gzip stream of n zero bytes (about n/1000 bytes on the wire).
func gzipBomb(n int) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zero := make([]byte, 64<<10)
	for written := 0; written < n; written += len(zero) {
		_, _ = zw.Write(zero)
	}
	_ = zw.Close()
	return buf.Bytes()
}
