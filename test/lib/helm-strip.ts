// A careful stand-in for `helm template` where no helm binary exists: turns a Helm template into plain YAML by
// following its control flow and replacing output actions by placeholders, so the YAML structure around the actions
// can be checked. It is not a Go template engine: conditions it can read (`.Values.x`, `not .Values.x`,
// `eq|ne .Values.x "lit"`, `with|range .Values.x`) are decided from the values given; every other condition takes the
// branch the variant says (`then`: the first branch, `else`: the else branch or nothing).
//
// House style it relies on (and reports when broken): a line either holds only control actions (if/else/end/with/
// range/define/variable assignments/fail/comments), or only one output action (typically `... | nindent N`), or YAML
// content with inline output actions. Actions never span lines, except `{{/* comments */}}`.

export type Variant = 'then' | 'else';

export interface StripOptions {
  values: unknown;
  variant: Variant;
}

export class TemplateShapeError extends Error {}

const ACTION = /\{\{-?\s*([\s\S]*?)\s*-?\}\}/g;
const COMMENT = /\{\{-?\s*\/\*[\s\S]*?\*\/\s*-?\}\}/g;
const CONTROL = /^(if|else|end|with|range|define|block)\b/;
const SILENT = /^(\$[A-Za-z_]\w*\s*:?=|fail\b)/;

interface Frame {
  kind: string;
  parentEmit: boolean;
  emit: boolean;
  taken: boolean;
}

export function valuesPath(values: unknown, path: string): { found: boolean; value: unknown } {
  let cur: unknown = values;
  for (const seg of path.split('.').filter(Boolean)) {
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur) || !(seg in (cur as object))) return { found: false, value: undefined };
    cur = (cur as Record<string, unknown>)[seg];
  }
  return { found: true, value: cur };
}

/** Go template truthiness: false, 0, nil, and empty strings, maps and lists are false. */
export function truthy(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === 0 || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === 'object') return Object.keys(v).length > 0;
  return true;
}

/** Decides a condition from the values when it has a readable shape; undefined otherwise. */
export function decide(cond: string, values: unknown): boolean | undefined {
  const c = cond.trim().replace(/^\((.*)\)$/, '$1').trim();
  let m = /^\$?\.Values((?:\.\w+)+)$/.exec(c);
  if (m) return truthy(valuesPath(values, m[1]).value);
  m = /^not\s+\$?\.Values((?:\.\w+)+)$/.exec(c);
  if (m) return !truthy(valuesPath(values, m[1]).value);
  m = /^(eq|ne)\s+\$?\.Values((?:\.\w+)+)\s+"([^"]*)"$/.exec(c);
  if (m) {
    const same = String(valuesPath(values, m[2]).value) === m[3];
    return m[1] === 'eq' ? same : !same;
  }
  return undefined;
}

const indentOf = (s: string) => /^ */.exec(s)![0].length;

/** Returns the YAML text the template would produce, with `__tpl__` placeholders for template output. */
export function stripTemplate(src: string, opts: StripOptions): string {
  const text = src.replace(COMMENT, (c) => '\n'.repeat(c.split('\n').length - 1));
  const lines = text.split('\n');
  const out: string[] = [];
  const stack: Frame[] = [];
  const emitting = () => (stack.length ? stack[stack.length - 1].emit : true);
  const pick = (cond: string) => decide(cond, opts.values) ?? opts.variant === 'then';
  let n = 0;

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if ((line.match(/\{\{/g) ?? []).length !== (line.match(/\}\}/g) ?? []).length) {
      throw new TemplateShapeError(`line ${i + 1}: an action spans lines: ${line.trim()}`);
    }
    const actions = [...line.matchAll(ACTION)].map((m) => m[1]);
    const rest = line.replace(ACTION, '').trim();
    const controls = actions.filter((a) => CONTROL.test(a) || SILENT.test(a));

    if (actions.length && rest === '' && controls.length === actions.length) {
      for (const a of actions) {
        const word = /^\S+/.exec(a)![0];
        const arg = a.slice(word.length).trim();
        if (word === 'if' || word === 'with' || word === 'range') {
          const take = emitting() && pick(arg);
          stack.push({ kind: word, parentEmit: emitting(), emit: take, taken: pick(arg) });
        } else if (word === 'define' || word === 'block') {
          stack.push({ kind: word, parentEmit: emitting(), emit: false, taken: true });
        } else if (word === 'else') {
          const f = stack[stack.length - 1];
          if (!f) throw new TemplateShapeError(`line ${i + 1}: else without if`);
          const elseIf = /^if\s+(.*)$/.exec(arg);
          const take = !f.taken && (elseIf ? pick(elseIf[1]) : true);
          f.emit = f.parentEmit && take;
          f.taken ||= take;
        } else if (word === 'end') {
          if (!stack.pop()) throw new TemplateShapeError(`line ${i + 1}: end without a block`);
        }
      }
      continue;
    }
    if (controls.length) throw new TemplateShapeError(`line ${i + 1}: control action mixed with output: ${line.trim()}`);
    if (!emitting()) continue;

    if (actions.length === 1 && rest === '') {
      // A whole-line output action: a YAML block at the indentation its nindent/indent names.
      const m = /\bn?indent\s+(\d+)/.exec(actions[0]);
      const ind = m ? Number(m[1]) : indentOf(line);
      const pad = ' '.repeat(ind);
      const sibling = (from: number, step: number, src: string[]) => {
        for (let j = from; j >= 0 && j < src.length; j += step) {
          const s = src[j];
          if (s.trim() === '' || /^\s*\{\{/.test(s)) continue;
          if (indentOf(s) < ind) return undefined;
          if (indentOf(s) === ind) return s.trim();
        }
        return undefined;
      };
      const near = sibling(out.length - 1, -1, out) ?? sibling(i + 1, 1, lines);
      n++;
      out.push(near?.startsWith('- ') ? `${pad}- __tpl_${n}__` : `${pad}__tpl_${n}__: __tpl__`);
      continue;
    }
    out.push(line.replace(ACTION, '__tpl__'));
  }
  if (stack.length) throw new TemplateShapeError(`unclosed ${stack.map((f) => f.kind).join(', ')} at end of template`);
  return out.join('\n');
}

/** Every `.Values.a.b.c` path a template mentions. */
export function valuesRefs(src: string): string[] {
  return [...new Set([...src.matchAll(/\.Values((?:\.[A-Za-z_]\w*)+)/g)].map((m) => m[1].slice(1)))];
}

/** Checks that block actions (if/with/range/define/block ... end) balance, for files that are not YAML. */
export function checkBalance(src: string): void {
  let depth = 0;
  for (const m of src.replace(COMMENT, '').matchAll(ACTION)) {
    const word = /^\S*/.exec(m[1])![0];
    if (['if', 'with', 'range', 'define', 'block'].includes(word)) depth++;
    else if (word === 'end' && --depth < 0) throw new TemplateShapeError('end without a block');
  }
  if (depth) throw new TemplateShapeError(`${depth} unclosed block(s)`);
}
