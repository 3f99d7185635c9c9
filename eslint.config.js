// Lint rules: typescript-eslint's type-aware recommended set over src/, config/, test/ and bench/.
import js from '@eslint/js'
import tseslint from 'typescript-eslint'

export default tseslint.config(
  { ignores: ['dist/', 'clients/*/dist/', 'node_modules/', 'data/', '.tap/', 'coverage/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: {
          allowDefaultProject: ['eslint.config.js', 'bench/*.js', 'scripts/*.js', 'test/helpers/*.mjs', 'deploy/compose/*.mjs'],
          // The plain JS scripts above are few and small; the default cap of 8 is about speed only.
          maximumDefaultProjectFileMatchCount_THIS_WILL_SLOW_DOWN_LINTING: 20
        },
        tsconfigRootDir: import.meta.dirname
      }
    },
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      // Interfaces such as Command.run are async by contract even where one implementation does not await.
      '@typescript-eslint/require-await': 'off',
      'no-console': 'off'
    }
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // tap's `t.test()` returns a promise the runner awaits for us.
      '@typescript-eslint/no-floating-promises': 'off'
    }
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: {
      globals: { process: 'readonly', console: 'readonly', Buffer: 'readonly', URL: 'readonly', performance: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', fetch: 'readonly' }
    }
  }
)
