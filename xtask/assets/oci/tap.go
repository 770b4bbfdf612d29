// Package tap is runvm's stand-in for github.com/mndrix/tap-go, which is in no
// Debian release: a Test Anything Protocol (TAP 13) writer with the methods the
// OCI runtime-tools validation suite calls. Output follows tap-go's format.
// YAML blocks are written as indented JSON (JSON is valid YAML), so that no
// YAML library is needed.
package tap

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// T is a TAP writer. Copies made by Todo share the test counter.
type T struct {
	nextTestNumber *int
	// TODO marks the following results with the TODO directive.
	TODO bool
	// Writer receives the TAP output; nil means os.Stdout.
	Writer io.Writer
}

// New returns a writer to os.Stdout whose first test is number 1.
func New() *T {
	n := 1
	return &T{nextTestNumber: &n}
}

func (t *T) w() io.Writer {
	if t.Writer == nil {
		return os.Stdout
	}
	return t.Writer
}

func (t *T) printf(format string, a ...interface{}) {
	fmt.Fprintf(t.w(), format, a...)
}

// Header writes the TAP version line and, when testCount > 0, the plan.
func (t *T) Header(testCount int) {
	t.printf("TAP version 13\n")
	if testCount > 0 {
		t.printf("1..%d\n", testCount)
	}
}

// Ok writes one test result.
func (t *T) Ok(test bool, description string) {
	ok := "ok"
	if !test {
		ok = "not ok"
	}
	if t.TODO {
		t.printf("%s %d # TODO %s\n", ok, *t.nextTestNumber, description)
	} else {
		t.printf("%s %d - %s\n", ok, *t.nextTestNumber, description)
	}
	*t.nextTestNumber++
}

// Fail writes a failed test result.
func (t *T) Fail(description string) { t.Ok(false, description) }

// Pass writes a passed test result.
func (t *T) Pass(description string) { t.Ok(true, description) }

// Skip writes count skipped tests.
func (t *T) Skip(count int, description string) {
	for i := 0; i < count; i++ {
		t.printf("ok %d # SKIP %s\n", *t.nextTestNumber, description)
		*t.nextTestNumber++
	}
}

// Todo returns a copy of t that marks its results TODO.
func (t *T) Todo() *T {
	c := *t
	c.TODO = true
	return &c
}

// Count is the number of tests written so far.
func (t *T) Count() int { return *t.nextTestNumber - 1 }

// AutoPlan writes the plan for the tests written so far.
func (t *T) AutoPlan() { t.printf("1..%d\n", t.Count()) }

func escapeNewlines(s string) string {
	return strings.Replace(strings.TrimRight(s, "\n"), "\n", "\n# ", -1)
}

// Diagnostic writes a (possibly multi-line) comment.
func (t *T) Diagnostic(message string) { t.printf("# %s\n", escapeNewlines(message)) }

// Diagnosticf writes a formatted (possibly multi-line) comment.
func (t *T) Diagnosticf(format string, a ...interface{}) {
	t.printf("# %s\n", escapeNewlines(fmt.Sprintf(format, a...)))
}

// YAML writes message as an indented YAML block (in JSON form).
func (t *T) YAML(message interface{}) error {
	b, err := json.MarshalIndent(message, "  ", "  ")
	if err != nil {
		return err
	}
	t.printf("  ---\n  %s\n  ...\n", b)
	return nil
}
