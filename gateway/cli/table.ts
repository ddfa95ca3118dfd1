/**
 * Aligned columns for the CLI's tables (`gpu-jobs list`, `hosts`, `queue`, a job's attempts), the same on
 * a terminal and in a pipe: two spaces between columns, widths counted in characters (not UTF-16 units),
 * numbers right-aligned, no trailing blanks.
 */

const width = (cell: string) => [...cell].length

/**
 * Rows of cells as lines, each column as wide as its widest cell; the columns whose index is in `right`
 * are right-aligned.
 *
 * @example alignRows([['#1', 'host-a', '12s'], ['#2', 'b', '3m 2s']], { right: [2], indent: '  ' })
 * // ['  #1  host-a    12s', '  #2  b       3m 2s']
 */
export function alignRows(
  rows: string[][],
  { right = [], indent = '' }: { right?: number[]; indent?: string } = {},
): string[] {
  const widths: number[] = []
  for (const row of rows)
    for (const [i, cell] of row.entries()) widths[i] = Math.max(widths[i] ?? 0, width(cell))
  return rows.map(
    (row) =>
      indent +
      widths
        .map((w, i) => {
          const cell = row[i] ?? ''
          const pad = ' '.repeat(w - width(cell))
          return right.includes(i) ? pad + cell : cell + pad
        })
        .join('  ')
        .trimEnd(),
  )
}

/**
 * The table as lines of text, header first; the columns named in `right` (numbers) are right-aligned.
 *
 * @example table(['STATE', 'JOBS'], [['waiting', '3']], ['JOBS'])
 * // 'STATE    JOBS\nwaiting     3'
 */
export function table(header: string[], rows: string[][], right: string[] = []): string {
  const columns = header.flatMap((name, i) => (right.includes(name) ? [i] : []))
  return alignRows([header, ...rows], { right: columns }).join('\n')
}
