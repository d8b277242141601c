// yamux_peer: HashiCorp's yamux (Debian's golang-github-hashicorp-yamux-dev)
// as the other end of our edge/tunnel Session, for
// tests/integration/test_tunnel_yamux_interop.py. Plain TCP on loopback.
//
//	yamux_peer -mode client -addr 127.0.0.1:PORT   dial, yamux client, run the scenarios below
//	yamux_peer -mode server -listen 127.0.0.1:0    print "listening ADDR", accept one connection, serve
//
// With -tls-ca FILE -tls-name NAME (client) or -tls-cert FILE -tls-key FILE
// (server) the connection is TLS, as between agents and edges.
//
// In both modes it serves the streams the other side opens: the first line
// of a stream is a command (see serve). Results go to stdout, one line each:
// "ok NAME ...", "FAIL NAME: why", "event ...". Exit status 0 only when
// every scenario passed.
//
// The 2019 snapshot of yamux returns EOF from Read once its own side has
// closed (Close is a half-close on the wire, but not for its reader): so
// this peer never reads after its own Close; the scenarios where the other
// side half-closes first check the half-close both ways instead.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

var (
	out     = bufio.NewWriter(os.Stdout)
	outMu   sync.Mutex
	failed  bool
	session *yamux.Session
)

func report(format string, args ...interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	line := fmt.Sprintf(format, args...)
	if strings.HasPrefix(line, "FAIL") {
		failed = true
	}
	fmt.Fprintln(out, line)
	out.Flush()
}

func pattern(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// readLine reads one command line byte by byte (nothing past the newline
// is consumed), at most 256 bytes.
func readLine(r io.Reader) (string, error) {
	var line []byte
	one := make([]byte, 1)
	for len(line) < 256 {
		if _, err := io.ReadFull(r, one); err != nil {
			return string(line), err
		}
		if one[0] == '\n' {
			return string(line), nil
		}
		line = append(line, one[0])
	}
	return string(line), errors.New("command line too long")
}

// serve runs one stream the other side opened.
func serve(st *yamux.Stream) {
	defer st.Close()
	cmd, err := readLine(st)
	if err != nil {
		report("FAIL serve: reading the command of stream %d: %v", st.StreamID(), err)
		return
	}
	fields := strings.Fields(cmd)
	if len(fields) == 0 {
		report("FAIL serve: empty command on stream %d", st.StreamID())
		return
	}
	switch fields[0] {
	case "echo": // copy until the other side's FIN, then FIN
		if _, err := io.Copy(st, st); err != nil {
			report("FAIL serve echo: stream %d: %v", st.StreamID(), err)
		}
	case "sink": // read until FIN, answer "got N SHA256", FIN
		data, err := io.ReadAll(st)
		if err != nil {
			report("FAIL serve sink: stream %d: %v", st.StreamID(), err)
			return
		}
		fmt.Fprintf(st, "got %d %s\n", len(data), digest(data))
	case "wait-reset": // answer ready; the other side resets the stream: Read and Write fail
		st.SetReadDeadline(time.Now().Add(60 * time.Second))
		fmt.Fprintf(st, "ready\n")
		_, rerr := io.Copy(io.Discard, st)
		_, werr := st.Write([]byte("x"))
		report("event wait-reset %s read=%v write=%v", strings.Join(fields[1:], " "), rerr, werr)
	case "ping": // ping the other side, answer ok
		rtt, err := session.Ping()
		if err != nil {
			fmt.Fprintf(st, "error %v\n", err)
			return
		}
		report("event ping-sent rtt=%s", rtt)
		fmt.Fprintf(st, "ok\n")
	case "tryopen": // try to open a stream: after the other side's go-away it must fail
		s2, err := session.OpenStream()
		if err != nil {
			fmt.Fprintf(st, "error %v\n", err)
			return
		}
		s2.Close()
		fmt.Fprintf(st, "opened\n")
	case "goaway": // go away, answer ok, then echo on this stream
		if err := session.GoAway(); err != nil {
			fmt.Fprintf(st, "error %v\n", err)
			return
		}
		report("event goaway-sent") // from now on yamux refuses SYNs with RST
		fmt.Fprintf(st, "ok\n")
		io.Copy(st, st)
	default:
		report("FAIL serve: unknown command %q", cmd)
	}
}

func acceptLoop() {
	for {
		st, err := session.AcceptStream()
		if err != nil {
			return
		}
		go serve(st)
	}
}

// ------------------------------------------------------------ client mode

func open(cmd string) (*yamux.Stream, error) {
	st, err := session.OpenStream()
	if err != nil {
		return nil, err
	}
	st.SetDeadline(time.Now().Add(240 * time.Second))
	if _, err := st.Write([]byte(cmd + "\n")); err != nil {
		return nil, err
	}
	return st, nil
}

// echo sends data on an "echo" stream while reading it back.
func echo(data []byte) error {
	st, err := open("echo")
	if err != nil {
		return err
	}
	defer st.Close()
	werr := make(chan error, 1)
	go func() {
		_, err := st.Write(data)
		werr <- err
	}()
	back := make([]byte, len(data))
	if _, err := io.ReadFull(st, back); err != nil {
		return fmt.Errorf("reading the echo back: %v", err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("writing: %v", err)
	}
	if !bytes.Equal(back, data) {
		return errors.New("echoed bytes differ")
	}
	return nil
}

func scenario(name string, f func() (string, error)) {
	start := time.Now()
	detail, err := f()
	if err != nil {
		report("FAIL %s: %v", name, err)
		return
	}
	report("ok %s %s took=%s", name, detail, time.Since(start).Round(time.Millisecond))
}

func runClient() {
	for _, n := range []int{1 << 10, 1 << 20, 64 << 20} {
		data := pattern(n, int64(n))
		scenario("echo-"+strconv.Itoa(n), func() (string, error) { return "", echo(data) })
	}
	scenario("concurrent-100", func() (string, error) {
		var wg sync.WaitGroup
		errs := make(chan error, 100)
		start := make(chan struct{})
		for i := 0; i < 100; i++ {
			wg.Add(1)
			go func(i int) { // opened from goroutines at once: SYNs in any order
				defer wg.Done()
				<-start
				if err := echo(pattern(16<<10+i, int64(i))); err != nil {
					errs <- fmt.Errorf("stream %d: %v", i, err)
				}
			}(i)
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			return "", err
		}
		return "", nil
	})
	scenario("half-close", func() (string, error) {
		// the other side writes N bytes and FINs; we read to EOF, then write
		// our answer on the same stream and FIN
		st, err := open("halfclose 1048576")
		if err != nil {
			return "", err
		}
		data, err := io.ReadAll(st)
		if err != nil {
			return "", fmt.Errorf("reading to EOF: %v", err)
		}
		if len(data) != 1<<20 {
			return "", fmt.Errorf("got %d bytes before EOF, want 1048576", len(data))
		}
		if _, err := fmt.Fprintf(st, "got %d %s\n", len(data), digest(data)); err != nil {
			return "", fmt.Errorf("writing after the peer's FIN: %v", err)
		}
		return digest(data), st.Close()
	})
	scenario("reset", func() (string, error) {
		st, err := open("reset")
		if err != nil {
			return "", err
		}
		_, rerr := io.Copy(io.Discard, st)
		if rerr != yamux.ErrConnectionReset {
			return "", fmt.Errorf("read ended with %v, want %v", rerr, yamux.ErrConnectionReset)
		}
		if _, werr := st.Write([]byte("x")); werr != yamux.ErrConnectionReset {
			return "", fmt.Errorf("write after reset: %v, want %v", werr, yamux.ErrConnectionReset)
		}
		return "", nil
	})
	scenario("ping", func() (string, error) {
		rtt, err := session.Ping()
		if err != nil {
			return "", fmt.Errorf("our ping: %v", err)
		}
		st, err := open("ping") // the other side pings us, answers ok
		if err != nil {
			return "", err
		}
		answer, err := io.ReadAll(st)
		if err != nil || string(answer) != "ok\n" {
			return "", fmt.Errorf("their ping: %q %v", answer, err)
		}
		return "rtt=" + rtt.String(), st.Close()
	})
	scenario("goaway-ours", func() (string, error) {
		// we go away; then the other side must not open streams
		if err := session.GoAway(); err != nil {
			return "", err
		}
		st, err := open("check-remote-goaway")
		if err != nil {
			return "", err
		}
		answer, err := io.ReadAll(st)
		if err != nil || string(answer) != "ok refused\n" {
			return "", fmt.Errorf("answer %q %v", answer, err)
		}
		return "", st.Close()
	})
	scenario("goaway-theirs", func() (string, error) {
		// the other side goes away: we cannot open, the open stream goes on
		st, err := open("goaway")
		if err != nil {
			return "", err
		}
		line, err := readLine(st)
		if err != nil || line != "ok" {
			return "", fmt.Errorf("answer %q %v", line, err)
		}
		if _, err := session.OpenStream(); err != yamux.ErrRemoteGoAway {
			return "", fmt.Errorf("open after go-away: %v, want %v", err, yamux.ErrRemoteGoAway)
		}
		if _, err := st.Write([]byte("after\n")); err != nil {
			return "", err
		}
		back, err := readLine(st)
		if err != nil || back != "after" {
			return "", fmt.Errorf("echo after go-away %q %v", back, err)
		}
		return "", st.Close()
	})
}

func config() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.MaxStreamWindowSize = uint32(*window)
	cfg.ConnectionWriteTimeout = 120 * time.Second // a busy machine is slow, not broken
	cfg.LogOutput = os.Stderr
	return cfg
}

var (
	window  = flag.Uint("window", 16<<20, "receive window per stream (bytes); yamux's default is 256 KiB")
	tlsCA   = flag.String("tls-ca", "", "client: dial TLS, trusting this CA (PEM)")
	tlsName = flag.String("tls-name", "", "client: the server name to send and verify")
	tlsCert = flag.String("tls-cert", "", "server: serve TLS with this certificate (PEM)")
	tlsKey  = flag.String("tls-key", "", "server: ... and this key (PEM)")
)

func fatal(what string, err error) {
	fmt.Fprintln(os.Stderr, what+":", err)
	os.Exit(2)
}

func dial(addr string) net.Conn {
	if *tlsCA == "" {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			fatal("dial", err)
		}
		return conn
	}
	pem, err := os.ReadFile(*tlsCA)
	if err != nil {
		fatal("tls-ca", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fatal("tls-ca", errors.New("no certificate in "+*tlsCA))
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: *tlsName, MinVersion: tls.VersionTLS12})
	if err != nil {
		fatal("dial tls", err)
	}
	return conn
}

func listenOn(addr string) net.Listener {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fatal("listen", err)
	}
	if *tlsCert == "" {
		return ln
	}
	cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
	if err != nil {
		fatal("tls-cert", err)
	}
	return tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
}

func main() {
	mode := flag.String("mode", "", "client or server")
	addr := flag.String("addr", "", "client: address to dial")
	listen := flag.String("listen", "127.0.0.1:0", "server: address to listen on")
	deadline := flag.Duration("deadline", 600*time.Second, "give up after this long")
	flag.Parse()
	time.AfterFunc(*deadline, func() {
		report("FAIL deadline: %s passed", *deadline)
		os.Exit(2)
	})
	var err error
	switch *mode {
	case "client":
		if session, err = yamux.Client(dial(*addr), config()); err != nil {
			fmt.Fprintln(os.Stderr, "yamux:", err)
			os.Exit(2)
		}
		go acceptLoop()
		runClient()
		session.Close()
	case "server":
		ln := listenOn(*listen)
		report("listening %s", ln.Addr())
		conn, err2 := ln.Accept()
		if err2 != nil {
			fmt.Fprintln(os.Stderr, "accept:", err2)
			os.Exit(2)
		}
		ln.Close()
		if session, err = yamux.Server(conn, config()); err != nil {
			fmt.Fprintln(os.Stderr, "yamux:", err)
			os.Exit(2)
		}
		acceptLoop() // until the session ends
		report("event session-closed")
	default:
		fmt.Fprintln(os.Stderr, "usage: yamux_peer -mode client -addr HOST:PORT | -mode server [-listen ADDR]")
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}
