package engine

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Event is one thing that happened during a command. Human output renders
// events as lines; -json prints each as one JSON object per line. Every string
// in an event has been redacted before it is emitted.
type Event struct {
	Time     time.Time `json:"time"`
	Type     string    `json:"type"`
	Step     string    `json:"step,omitempty"`
	State    State     `json:"state,omitempty"`
	Message  string    `json:"message,omitempty"`
	Done     int64     `json:"done,omitempty"`
	Total    int64     `json:"total,omitempty"`
	Rate     float64   `json:"rate,omitempty"`
	ETA      string    `json:"eta,omitempty"`
	Duration string    `json:"duration,omitempty"`
	Error    string    `json:"error,omitempty"`
	// Hints say what the operator can do about Error (WithHint).
	Hints   []string `json:"hints,omitempty"`
	Details []string `json:"details,omitempty"`
}

// Event types.
const (
	EventRun      = "run"      // a command started: Message says what
	EventState    = "state"    // a step changed state
	EventLog      = "log"      // a line a step wrote
	EventProgress = "progress" // items done of total
	EventPlan     = "plan"     // a step's plan: Details
	EventWarning  = "warning"
	EventSummary  = "summary"
)

// Output receives events.
type Output interface {
	Emit(Event)
}

// JSONOutput writes one JSON object per line.
type JSONOutput struct {
	mu sync.Mutex
	W  io.Writer
}

func (o *JSONOutput) Emit(e Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	b, _ := json.Marshal(e)
	o.W.Write(append(b, '\n'))
}

// HumanOutput writes readable lines. On a terminal (Terminal set), progress
// is a bar with rate and ETA that other lines print above; otherwise it is a
// periodic line.
type HumanOutput struct {
	mu       sync.Mutex
	W        io.Writer
	Terminal bool
	bar      *progressbar.ProgressBar
	barStep  string
}

func (o *HumanOutput) Emit(e Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.Terminal && e.Type == EventProgress {
		o.showBar(e)
		return
	}
	// Steps quote what servers said (key names, errors): no control
	// character among them reaches the terminal as one.
	e.Message, e.Error = PrintableLines(e.Message), PrintableLines(e.Error)
	for i, d := range e.Details {
		e.Details[i] = PrintableLines(d)
	}
	if o.bar != nil {
		o.bar.Clear()
		defer o.bar.RenderBlank()
		if e.Type == EventState && e.Step == o.barStep {
			o.bar = nil // the step moved on: its bar is done
		}
	}
	switch e.Type {
	case EventRun, EventSummary:
		fmt.Fprintf(o.W, "%s\n", e.Message)
	case EventState:
		line := fmt.Sprintf("%-28s %s", e.Step, e.State)
		if e.Duration != "" {
			line += " (" + e.Duration + ")"
		}
		if e.Message != "" {
			line += ": " + e.Message
		}
		if e.Error != "" {
			line += ": " + e.Error
		}
		fmt.Fprintln(o.W, line)
		for _, h := range e.Hints {
			fmt.Fprintf(o.W, "%-28s hint: %s\n", e.Step, h)
		}
	case EventLog:
		fmt.Fprintf(o.W, "%-28s | %s\n", e.Step, e.Message)
	case EventProgress:
		line := fmt.Sprintf("%-28s %d/%d", e.Step, e.Done, e.Total)
		if e.Total > 0 {
			line += fmt.Sprintf(" (%.0f%%)", 100*float64(e.Done)/float64(e.Total))
		}
		if e.Rate > 0 {
			line += fmt.Sprintf(", %.0f/s", e.Rate)
		}
		if e.ETA != "" {
			line += ", ETA " + e.ETA
		}
		fmt.Fprintln(o.W, line)
	case EventPlan:
		fmt.Fprintf(o.W, "\n%s %s\n", e.Step, e.Message)
		for _, d := range e.Details {
			fmt.Fprintf(o.W, "  %s\n", strings.ReplaceAll(d, "\n", "\n  "))
		}
	case EventWarning:
		fmt.Fprintf(o.W, "runbook: warning: %s\n", e.Message)
	default:
		fmt.Fprintf(o.W, "%s %s %s\n", e.Type, e.Step, e.Message)
	}
}

func (o *HumanOutput) showBar(e Event) {
	if o.bar == nil || o.barStep != e.Step {
		o.barStep = e.Step
		o.bar = progressbar.NewOptions64(e.Total,
			progressbar.OptionSetWriter(o.W),
			progressbar.OptionSetDescription(fmt.Sprintf("%-28s", e.Step)),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("items"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetWidth(30),
		)
	}
	if e.Total > 0 {
		o.bar.ChangeMax64(e.Total)
	}
	o.bar.Set64(e.Done)
}

// emitter redacts and timestamps events.
type emitter struct {
	out Output
	rd  *Redactor
}

func (em emitter) emit(e Event) {
	if em.out == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	e.Message = em.rd.String(e.Message)
	e.Error = em.rd.String(e.Error)
	for i, d := range e.Details {
		e.Details[i] = em.rd.String(d)
	}
	for i, h := range e.Hints {
		e.Hints[i] = em.rd.String(h)
	}
	em.out.Emit(e)
}
