package childproc

import (
	"bufio"
	"io"
	"os/exec"
	"testing"
)

// TestStartEchoes drives cat: a line written to its stdin comes back on
// its stdout, and closing stdin ends it.
func TestStartEchoes(t *testing.T) {
	cmd := exec.Command("cat")
	in, out, err := Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(in, "ping\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ping\n" {
		t.Fatalf("read %q, %v; want \"ping\\n\"", line, err)
	}
	in.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("cat after stdin closed: %v", err)
	}
}

func TestStartMissingBinary(t *testing.T) {
	if _, _, err := Start(exec.Command("/nonexistent/roam-childproc")); err == nil {
		t.Fatal("no error for a binary that does not exist")
	}
}
