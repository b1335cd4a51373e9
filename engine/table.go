package engine

import (
	"strings"
	"text/tabwriter"
)

// Table is a table a step keeps in the journal for runbook status (for
// example the cutover's nodes): a checkpoint whose item is TableItem(name)
// holding a Table is printed under the steps, the latest of each name.
type Table struct {
	Title  string     `json:"title"`
	Header []string   `json:"header"`
	Rows   [][]string `json:"rows"`
}

const tableItemPrefix = "table/"

// TableItem is the checkpoint item that holds the table name.
func TableItem(name string) string { return tableItemPrefix + name }

// IsTableItem reports whether a checkpoint item holds a Table.
func IsTableItem(item string) bool { return strings.HasPrefix(item, tableItemPrefix) }

// Text is the table in aligned columns, its header in capitals.
func (t *Table) Text() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	tw.Write([]byte(strings.ToUpper(strings.Join(t.Header, "\t")) + "\n"))
	for _, row := range t.Rows {
		tw.Write([]byte(strings.Join(row, "\t") + "\n"))
	}
	tw.Flush()
	return b.String()
}
