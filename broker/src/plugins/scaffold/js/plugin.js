// Hookwire plugin "{{name}}", in JavaScript (ComponentizeJS): refuses a publication
// whose `text` is longer than `max_len` characters and tags every other one with meta
// `checked_by`.
//
// The module exports the interfaces of its world (wit/world.wit) as objects: WIT names
// become camelCase, variants `{ tag, val }`, an `option` a value or undefined,
// `result<_, string>` a return or a thrown string.
import { log } from 'hookwire:plugin/host@0.2.0';

let maxLen = 500;

export const lifecycle = {
  // hooks undefined: the broker calls every hook the world exports.
  info() {
    return { name: '{{name}}', version: '0.1.0' };
  },

  init(config) {
    let cfg;
    try {
      cfg = JSON.parse(config || '{}');
    } catch (e) {
      throw `config is not valid JSON: ${e.message}`;
    }
    if (cfg.max_len !== undefined) {
      if (!Number.isInteger(cfg.max_len) || cfg.max_len < 0) {
        throw 'config.max_len must be a number of characters';
      }
      maxLen = cfg.max_len;
    }
    log('info', `{{name}} ready: max_len ${maxLen}`);
  },
};

export const onPublish = {
  onPublish(publication) {
    let text = null;
    try {
      const data = JSON.parse(new TextDecoder().decode(publication.data()));
      if (typeof data?.text === 'string') text = data.text;
    } catch {}
    if (text !== null && [...text].length > maxLen) {
      const reason = `the text is too long (over ${maxLen} characters)`;
      return { tag: 'refuse', val: { reason, code: 'too_long' } };
    }
    return {
      tag: 'modify',
      val: { addMeta: [{ key: 'checked_by', value: '"{{name}}"' }], addChannels: [], emit: [] },
    };
  },
};
