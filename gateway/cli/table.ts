/**
 * Aligned columns for the CLI's tables (`gpu-jobs hosts`, `gpu-jobs queue`), the same on a terminal and in
 * a pipe: two spaces between columns, numbers right-aligned, no trailing blanks.
 */

/**
 * The table as lines of text, header first; the columns named in `right` (numbers) are right-aligned.
 *
 * @example table(['STATE', 'JOBS'], [['waiting', '3']], ['JOBS'])
 * // 'STATE    JOBS\nwaiting     3'
 */
export function table(header: string[], rows: string[][], right: string[] = []): string {
  const width = (i: number) =>
    rows.reduce((w, row) => Math.max(w, [...(row[i] ?? '')].length), [...(header[i] ?? '')].length)
  const widths = header.map((_, i) => width(i))
  const render = (cells: string[]) =>
    header
      .map((name, i) => {
        const cell = cells[i] ?? ''
        const pad = ' '.repeat(Math.max(0, (widths[i] ?? 0) - [...cell].length))
        return right.includes(name) ? pad + cell : cell + pad
      })
      .join('  ')
      .trimEnd()
  return [render(header), ...rows.map(render)].join('\n')
}
